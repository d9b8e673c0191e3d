"""Ultralytics YOLO: callbacks on the model that stream its training and obey the run's commands.

    from ultralytics import YOLO
    from trainpilot.integrations.ultralytics import add_callbacks

    model = YOLO("yolo11n.yaml")
    add_callbacks(model, project="shapes")
    model.train(data="shapes.yaml", epochs=50)

A run is made once the trainer is set up (its config: the trainer's args). At the end of every training
batch the batch's losses (``train/box_loss``...) and the lr of every param group (``lr/pg0``...) are
logged, then the run's commands applied: pause blocks there, stop sets ``trainer.stop`` (the loop ends
at that batch, then validates and saves as after an epoch), checkpoint writes the trainer's own
checkpoint (`save_model`) to ``<save_dir>/weights/trainpilot-step{N}.pt``, and set_lr pins every param
group's lr from then on: Ultralytics sets it every batch while warming up and every epoch from its
scheduler, so it is put back before every optimizer step. At the end of every epoch the validation
metrics and losses (``metrics/mAP50(B)``, ``val/box_loss``...); the final validation of best.pt as
``best/...``; system load every few seconds; with ``plots=True`` the images Ultralytics draws
(``plots/val_batch0_pred``...).

Steps count the training batches from 0. Commands wait for the next training batch to end: validation
is not interrupted. Importing this module imports neither Ultralytics nor torch. Under DDP
(``device="0,1"``) Ultralytics pickles the callbacks into its worker processes, which share one run as
under torchrun; that is untested, and a `run=` of your own cannot travel there.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainpilot.extras import extra
from trainpilot.integrations.steering import Steering, jsonable, pin_torch_lr, scalars, start, torch_lrs
from trainpilot.sdk.run import Run

FEATURE = "trainpilot.integrations.ultralytics"
IMAGES = {".jpg", ".jpeg", ".png"}
PLOTS_WAIT_S = 10.0  # at the end: how long the plots Ultralytics draws on threads may take to land


def add_callbacks(
    model: Any,
    project: str = "default",
    name: str | None = None,
    *,
    run: Run | None = None,
    checkpoint_dir: str | None = None,
    system_every_s: float = 10.0,
    **init_kwargs: Any,
) -> TrainpilotCallbacks:
    """Register the callbacks on an Ultralytics `model` (``YOLO(...)``) for its next ``train()`` calls.

    Each training makes a run of `project` named `name` (default: Ultralytics' run name, e.g. ``train2``)
    with `init_kwargs` for `trainpilot.init` (server=, serve=, token=, data_dir=...), and finishes it;
    or pass `run=` to log to a run of your own, which is left for you to finish. Returns the callbacks'
    state, whose `steering` is the current training's.
    """
    with extra("ultralytics", FEATURE):
        import ultralytics  # noqa: F401  (the model is one: this only turns a broken install into one line)
    callbacks = TrainpilotCallbacks(project, name, run, checkpoint_dir, system_every_s, init_kwargs)
    for event, handler in callbacks.handlers().items():
        model.add_callback(event, handler)
    return callbacks


class TrainpilotCallbacks:
    """What the callbacks share across one training; see `add_callbacks`."""

    def __init__(
        self,
        project: str,
        name: str | None,
        run: Run | None,
        checkpoint_dir: str | None,
        system_every_s: float,
        init_kwargs: Mapping[str, Any],
    ) -> None:
        self._project = project
        self._run_name = name
        self._run = run
        self._checkpoint_dir = checkpoint_dir
        self._system_every_s = system_every_s
        self._init_kwargs = dict(init_kwargs)
        self.steering: Steering | None = None
        self.step = 0  # the next training batch's step
        self._epoch = -1  # the epoch whose batches run: a fit-epoch-end of another is the final evaluation
        self._trainer: Any = None  # the training under way, which the commands act on
        self._yours: Steering | None = None  # the steering of a run passed in, kept across trainings
        self._hooked: Any = None  # the optimizer whose steps put a set lr back
        self._hook: Any = None
        self._plots: dict[str, Any] = {}  # plot file -> the timestamp it was logged with
        self._metrics: Any = None  # the trainer's metrics dict last logged

    def handlers(self) -> dict[str, Any]:
        return {
            "on_pretrain_routine_end": self.on_pretrain_routine_end,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_batch_end": self.on_train_batch_end,
            "on_fit_epoch_end": self.on_fit_epoch_end,
            "on_train_end": self.on_train_end,
            "teardown": self.teardown,
        }

    # -- the callbacks ------------------------------------------------------------------------------

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Model, data, optimizer and scheduler are ready: make the run and the steering."""
        import ultralytics

        config = jsonable(vars(trainer.args))
        config["ultralytics"] = {
            "version": ultralytics.__version__,
            "optimizer": type(trainer.optimizer).__name__,
            "world_size": max(1, int(getattr(trainer, "world_size", 1) or 1)),
        }
        name = self._run_name or str(getattr(trainer.args, "name", "") or "") or None
        run, owned = start(self._run, self._project, name, config, self._init_kwargs)
        self._trainer = trainer
        self._epoch, self._plots = -1, {}
        self._metrics = trainer.metrics  # the zeros the trainer starts with: no validation yet
        if owned or self._yours is None:
            self.steering = Steering(
                run,
                set_lr=self._set_lr,
                checkpoint_path=self._checkpoint_path,
                save=self._save,
                owned=owned,
                system_every_s=self._system_every_s,
            )
            self.step = 0
            if not owned:  # your run's handlers stay registered: the next training reuses them
                self._yours = self.steering
        else:  # another training logged to your run: its steps go on, a set lr of the last one is let go
            self.steering = self._yours
            self.steering.lr = None
        self._hook_optimizer(trainer)

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._epoch = trainer.epoch
        self._hook_optimizer(trainer)  # a rebuilt optimizer (after an out-of-memory retry) is hooked too

    def on_train_batch_end(self, trainer: Any) -> None:
        """Log what this batch did, then apply the commands (blocking while paused)."""
        steering = self.steering
        if steering is None:
            return
        step = self.step
        self.step += 1
        # a set lr, put back over this batch's warmup: the optimizer steps only every `accumulate`
        # batches (nbs / batch), so the hook before each step is not enough for what is logged
        steering.hold_lr()
        values = scalars(trainer.label_loss_items(trainer.loss_items, prefix="train"))
        values.update(torch_lrs([trainer.optimizer]))
        steering.run.log(values, step=step)
        if steering.boundary(step):
            trainer.stop = True  # checked right after this callback: the epoch ends at this batch

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """An epoch's validation metrics; or, after the last epoch, the final evaluation of best.pt."""
        if self.steering is None:
            return
        final = trainer.epoch != self._epoch  # final_eval() runs this with epoch + 1, after the loop
        step = max(0, self.step - 1)
        # each validation makes a new dict; with val=False an epoch that skipped it still holds the last
        validated = trainer.metrics is not None and trainer.metrics is not self._metrics
        self._metrics = trainer.metrics
        metrics = scalars(trainer.metrics) if validated else {}
        if final:
            if metrics:
                self.steering.run.log({f"best/{key}": value for key, value in metrics.items()}, step=step)
        else:
            self.steering.run.log({**metrics, "epoch": trainer.epoch + 1}, step=step)
        self._log_plots(trainer, step)

    def on_train_end(self, trainer: Any) -> None:
        if self.steering is None:
            return
        _wait_for_plots(PLOTS_WAIT_S)
        self._log_plots(trainer, max(0, self.step - 1))
        self._finish(failed=False)

    def teardown(self, trainer: Any) -> None:
        """After training, however it ended: a run not finished by `on_train_end` failed (or was
        interrupted, and ends as stopped or finished)."""
        if self.steering is not None:
            error = sys.exc_info()[1]
            self._finish(failed=error is not None and not isinstance(error, KeyboardInterrupt))

    # -- helpers --------------------------------------------------------------------------------------

    def _finish(self, failed: bool) -> None:
        steering, self.steering, self._trainer = self.steering, None, None
        if self._hook is not None:
            self._hook.remove()
            self._hook = self._hooked = None
        if steering is not None:
            steering.end(failed=failed)

    def _hook_optimizer(self, trainer: Any) -> None:
        """Put a set lr back before every optimizer step: after the warmup of this batch has moved it."""
        optimizer = trainer.optimizer
        if optimizer is None or optimizer is self._hooked:
            return
        if self._hook is not None:
            self._hook.remove()

        def hold(*_: Any) -> None:
            if self.steering is not None:
                self.steering.hold_lr()

        self._hook = optimizer.register_step_pre_hook(hold)
        self._hooked = optimizer

    def _running(self) -> Any:
        if self._trainer is None:
            raise RuntimeError("no Ultralytics training of this run is under way")
        return self._trainer

    def _set_lr(self, lr: float) -> None:
        trainer = self._running()
        pin_torch_lr([trainer.optimizer], [trainer.scheduler], lr)

    def _checkpoint_path(self) -> str:
        """``<save_dir>/weights/trainpilot-step{N}.pt``: the weights after steps 0..N-1, the same on every
        rank (the step and the folder are)."""
        folder = Path(self._checkpoint_dir) if self._checkpoint_dir else Path(self._running().wdir)
        return str(folder / f"trainpilot-step{self.step}.pt")

    def _save(self, file: str) -> None:
        """The checkpoint Ultralytics writes at an epoch's end, written now to `file` (last.pt and best.pt
        stay what Ultralytics made them). By rank 0 alone, as Ultralytics saves: it is no collective."""
        trainer = self._running()
        if self.steering is not None and self.steering.run.rank != 0:
            return
        path = Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = trainer.last, trainer.best, trainer.save_period
        trainer.last = trainer.best = path
        trainer.save_period = -1
        try:
            trainer.save_model()
        finally:
            trainer.last, trainer.best, trainer.save_period = kept

    def _log_plots(self, trainer: Any, step: int) -> None:
        """The images Ultralytics has drawn (and registered with `on_plot`) since the last call."""
        assert self.steering is not None
        validator = getattr(trainer, "validator", None)
        for plots in (getattr(trainer, "plots", None), getattr(validator, "plots", None)):
            for file, info in list((plots or {}).items()):
                path = Path(file)
                stamp = info.get("timestamp") if isinstance(info, Mapping) else None
                if path.suffix.lower() not in IMAGES or self._plots.get(str(path)) == stamp:
                    continue
                try:
                    image = path.read_bytes()
                except OSError:
                    continue
                self._plots[str(path)] = stamp
                self.steering.run.log_image(f"plots/{path.stem}", image, step=step)


def _wait_for_plots(timeout: float) -> None:
    """Ultralytics draws its plots on threads of their own (`plot_images` is `@threaded`): let the last
    ones land before their files are read."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.endswith("(plot_images)"):
            thread.join(max(0.0, deadline - time.monotonic()))
