"""What every framework integration shares: a run, the commands applied at a batch boundary, a pinned lr.

A framework's callback builds one `Steering` when training starts and calls `boundary()` at the end of
every batch, on every rank: there the run's pending commands are applied and acknowledged (pause
blocks there until resume; under torch.distributed every rank meets there, sdk/distributed.py). What
the commands do is the framework's: `set_lr(lr)` and `save()` are given by the integration. A live
set_lr wins over the framework's schedule from then on: `boundary()` puts it back after every
scheduler step, so the rate logged is the rate used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trainpilot.sdk.run import Run, init
from trainpilot.sdk.system import Every, system_metrics

SYSTEM_EVERY_S = 10.0


class Steering:
    """One run as a framework's loop sees it: `boundary()` once per batch, `end()` once at the end."""

    def __init__(
        self,
        run: Run,
        *,
        set_lr: Callable[[float], Any] | None = None,
        checkpoint_path: Callable[[], str] | None = None,
        save: Callable[[str], Any] | None = None,
        owned: bool = True,
        system_every_s: float = SYSTEM_EVERY_S,
    ) -> None:
        self.run = run
        self.lr: float | None = None  # the last set_lr: held over the schedule from then on
        self._set_lr = set_lr
        self._owned = owned  # a run the integration made is finished by it; one passed in is the user's
        self._system_due = Every(system_every_s)
        self._checkpoint_path = checkpoint_path
        self._save = save
        self._save_due: str | None = None
        self._sent_step = -1
        self._sent: set[str] = set()  # the metrics already logged at `_sent_step`
        if set_lr is not None:
            run.on_control("set_lr", self._pin)
        if save is not None and checkpoint_path is not None:
            run.on_control("checkpoint", self._checkpoint)

    def boundary(self, step: int) -> bool:
        """Apply the commands that arrived (blocking while paused) and hold a set lr; True: stop now."""
        self.run.wait_if_paused()
        if self._save_due is not None:
            self._save_together(self._save_due)
        self.hold_lr()
        if self._system_due():
            system = system_metrics()
            self.run.log(system, step=step)
            if self.run.world_size > 1:
                self.run.log_rank(system, step=step)
        return self.run.should_stop

    def log_once(self, values: Mapping[str, Any], step: int) -> None:
        """The numbers of a framework's metrics dict, each once per step: the store keeps every point
        it is sent, and frameworks repeat themselves (the Hugging Face Trainer's ``epoch`` in every log
        of a step and an evaluation in two hooks; Keras's last batch metrics again at the epoch end)."""
        if step != self._sent_step:
            self._sent_step, self._sent = step, set()
        new = {key: value for key, value in scalars(values).items() if key not in self._sent}
        if new:
            self._sent.update(new)
            self.run.log(new, step=step)

    def hold_lr(self) -> None:
        """Put a set lr back: after a scheduler or a warmup has moved it."""
        if self.lr is not None and self._set_lr is not None:
            self._set_lr(self.lr)

    def end(self, failed: bool = False) -> None:
        """Finish the run this integration started: failed, stopped (after a stop command) or finished."""
        if self._owned:
            self.run.finish("failed" if failed else None)

    def _checkpoint(self, _: Any) -> str:
        """Save now, alone; under torch.distributed after the ranks' meeting (`boundary`), where every
        rank saves at once: a framework's save is a collective there, which rank 0 alone would hang in
        while the others wait for its news. The acknowledgement names the file either way."""
        assert self._checkpoint_path is not None and self._save is not None
        path = self._checkpoint_path()
        if self.run.world_size > 1:
            self._save_due = path
        else:
            self._save(path)
        return path

    def _save_together(self, path: str) -> None:
        assert self._save is not None
        self._save_due = None
        try:
            self._save(path)
        except Exception as exc:  # acknowledged already: say it failed, and train on
            self.run.log_event("log", {"text": f"checkpoint to {path} failed: {exc!r}", "level": "error"})
            return
        self.run.log_event("log", {"text": f"checkpoint written to {path}", "path": path})

    def _pin(self, value: Any) -> float:
        lr = float(value)
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"a learning rate is a finite number >= 0, not {value!r}")
        assert self._set_lr is not None
        self._set_lr(lr)
        self.lr = lr
        return lr


def start(
    run: Run | None, project: str, name: str | None, config: Mapping[str, Any], init_kwargs: Mapping[str, Any]
) -> tuple[Run, bool]:
    """The run to log to: the one given, or a new one (`trainpilot.init`); the flag says it is new."""
    if run is not None:
        return run, False
    return init(project=project, name=name, config=jsonable(config), **init_kwargs), True


def pin_torch_lr(optimizers: Iterable[Any], schedulers: Iterable[Any], lr: float) -> None:
    """Every param group of every torch optimizer at `lr`, and each scheduler made to say so.

    Frameworks log the rate from `scheduler.get_last_lr()` (the Hugging Face Trainer does), which
    reads `_last_lr`; it is set too, so what is logged is what the optimizer uses.
    """
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    for scheduler in schedulers:
        groups = getattr(getattr(scheduler, "optimizer", None), "param_groups", None)
        if groups is not None and hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [lr] * len(groups)


def torch_lrs(optimizers: Iterable[Any]) -> dict[str, float]:
    """The rates in use, as metrics: ``lr`` for one group, ``lr/pg{i}`` (``lr/opt{j}/pg{i}``) for more."""
    found = [
        (j, i, float(group["lr"]))
        for j, optimizer in enumerate(optimizers)
        for i, group in enumerate(optimizer.param_groups)
    ]
    if len(found) == 1:
        return {"lr": found[0][2]}
    several = len({j for j, _, _ in found}) > 1
    return {(f"lr/opt{j}/pg{i}" if several else f"lr/pg{i}"): lr for j, i, lr in found}


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a framework's metrics dict (0-d tensors and numpy scalars included); strings,
    lists and bigger tensors are left out, since a metric is one number."""
    out: dict[str, float] = {}
    for key, value in values.items():
        number = _number(value)
        if number is not None:
            out[str(key)] = number
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    item = getattr(value, "item", None)
    if not callable(item):
        return None
    try:
        value = item()  # a 0-d tensor or a numpy scalar; more than one element raises
    except (ValueError, RuntimeError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def jsonable(value: Any, depth: int = 6) -> Any:
    """A config as JSON can carry it: numbers, strings, lists and dicts as they are, anything else
    (paths, enums, dtypes, classes) as its str, so a framework's own config object never stops a run."""
    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth <= 0:
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, depth - 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item, depth - 1) for item in value]
    return str(value)
