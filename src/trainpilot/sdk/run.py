"""The training-side API: `init` a run, `log` to it, obey the commands sent to it, `finish` it.

>>> run = trainpilot.init(project="digits", config={"lr": 0.05})    # doctest: +SKIP
>>> run.on_control("set_lr", lambda lr: set_lr(optimizer, lr))       # doctest: +SKIP
>>> for step in range(steps):                                         # doctest: +SKIP
...     run.wait_if_paused()          # applies commands; blocks while paused
...     if run.should_stop:
...         break
...     run.log({"train/loss": loss, "lr": lr})
>>> run.finish()                                                      # doctest: +SKIP

`log()` only puts a tuple on a queue and returns (well under a microsecond); a background thread
does everything else (sender.py). After `init()` nothing here raises into the training loop:
problems are logged once and training continues (STYLE.md). Commands arrive on a listener thread
and are applied on the training thread at `wait_if_paused()`, each acknowledged on the stream
(control.py).

Under `torchrun` every rank calls `init()` and `wait_if_paused()`; the ranks share one run. Rank 0
logs it and listens; other ranks' `log()` is a no-op, `log_rank()` logs ``rank{r}/...`` metrics
from any rank, and each command is applied on every rank at the same step (distributed.py).
`init(serve=True)` runs the server in this process (embedded.py); spools that dead processes left
on the data dir are sent in the background (orphans.py).
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from trainpilot.events import ACTIONS, RUN_STATUSES
from trainpilot.exceptions import TransportError
from trainpilot.sdk import orphans
from trainpilot.sdk.control import Control, Handler
from trainpilot.sdk.distributed import Lockstep, Ranks, ranks, shared_spec
from trainpilot.sdk.sender import CLOSE, Flush, Sender, warn_once
from trainpilot.sdk.spool import Spool
from trainpilot.sdk.transport import HttpTransport, Transport
from trainpilot.wire import MAX_STEP

_now = time.time  # bound once: log() is the hot path

log = logging.getLogger("trainpilot")
DEFAULT_SERVER = "http://127.0.0.1:8765"
ALONE = Ranks()  # a run in one process: rank 0 of 1


class Run:
    """A live run. Create it with `trainpilot.init`."""

    def __init__(
        self,
        transport: Transport,
        spec: dict[str, Any],
        data_dir: str,
        token: str | None,
        control: bool = True,
        where: Ranks = ALONE,
        lockstep: Lockstep | None = None,
    ) -> None:
        self.id: str = spec["id"]
        self.project: str = spec["project"]
        self.name: str = spec["name"]
        self.config: dict[str, Any] = spec["config"]
        self.url = transport.url
        self.rank, self.world_size = where.rank, where.world_size
        self._next_step = 0
        self._finished = False
        # every rank of a run draws seqs from its own residue class, so their events never collide
        stride = where.world_size
        spool = Spool.for_run(data_dir, self.id, where.rank)
        spool.claim()
        self._sender = Sender(
            transport,
            spool,
            spec,
            seq_base=time.time_ns() // 1000 // stride * stride + where.rank,
            seq_stride=stride,
        )
        # what log() and the others queue with: rank 0 speaks for the run; after finish(), nothing does
        self._put: Callable[[Any], None] = self._sender.queue.put if where.rank == 0 else _discard
        self._put_rank: Callable[[Any], None] = self._sender.queue.put  # log_rank(), from any rank
        together = control and where.world_size > 1
        self._control = Control(self.log_event, lambda: self._next_step, where, together, lockstep)
        cursor = self._create_now(transport, spec) if where.rank == 0 else None
        self._sender.start()
        if control and where.rank == 0:
            self._control.listen(self.url, self.id, token, cursor)
        self.log_event("status", {"status": "running"})
        atexit.register(self._at_exit)

    def _create_now(self, transport: Transport, spec: dict[str, Any]) -> int | None:
        """Create the run if the server answers, so commands sent from now on are not missed."""
        try:
            run = transport.create_run(spec)
        except TransportError:
            return None  # the sender creates it once the server is up
        self._sender.created = True
        cursor = run.get("last_event_id")
        return cursor if isinstance(cursor, int) else None

    # -- the hot path -------------------------------------------------------------------------------

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        """Queue metrics for `step` (default: the previous step + 1). Returns at once; never raises."""
        snapshot: dict[str, Any] | None
        try:
            snapshot = {**data}  # the caller may reuse its dict; the sender reads this copy later
        except Exception:  # not a mapping, or one that raises
            snapshot = _copied(data, "log-arg", "run.log() takes a dict of metrics")
            if snapshot is None:
                return
        # `__class__`, the bound clock and `{**data}` each saved ~10 ns of ~300 (ad hoc timeit variants)
        if step.__class__ is not int or not 0 <= step <= MAX_STEP:
            step = self._next_step if step is None else self._coerce_step(step)
        self._next_step = step + 1
        self._put(("metrics", step, _now(), snapshot))

    def _coerce_step(self, step: Any) -> int:
        """A step the server takes (an int in 0..2**63-1): numpy/tensor ints become ints, nonsense the
        next step. The server refuses a whole batch for one bad step, so it must not leave here."""
        try:
            value = int(step)
        except Exception:  # NaN, inf, strings, objects whose __int__ raises
            value = -1
        if not 0 <= value <= MAX_STEP:
            warn_once(
                "log-step", f"trainpilot: step {_shown(step)} is not an integer in 0..2**63-1; using the next"
            )
            return self._next_step
        return value

    def _step(self, step: Any, default: int) -> int:
        """`step` as given when the server takes it, `default` for None, else `_coerce_step`'s answer."""
        if step is None:
            return default
        if type(step) is int and 0 <= step <= MAX_STEP:
            return step
        return self._coerce_step(step)

    def log_rank(self, data: dict[str, Any], step: int | None = None) -> None:
        """Queue this rank's own metrics as ``rank{r}/<key>``, from any rank (others' `log()` is a no-op).

        For what differs between ranks under torchrun: system load, data time. Default step: the step
        of the last `log()`, which every rank counts even where `log()` sends nothing. Never raises.
        """
        try:
            tagged = {f"rank{self.rank}/{key}": value for key, value in data.items()}
        except Exception:
            warn_once("log-arg", f"trainpilot: run.log_rank() takes a dict, got {type(data).__name__}")
            return
        self._put_rank(("metrics", self._step(step, max(0, self._next_step - 1)), time.time(), tagged))

    def log_event(self, kind: str, data: dict[str, Any], step: int | None = None) -> None:
        """Queue an event of another kind: ``status``, ``media``, ``log``, ``insight``. Never raises: an
        event the server cannot take (not JSON, an unknown kind) is dropped alone, with a warning."""
        snapshot = _copied(data, "event-arg", "run.log_event() takes a dict")
        if snapshot is None:
            return
        self._put((kind, None if step is None else self._step(step, self._next_step), time.time(), snapshot))

    def log_image(self, name: str, image: Any, step: int | None = None, caption: str | None = None) -> None:
        """Queue an image (PIL image, HxW[xC] or CxHxW array/tensor, or PNG/JPEG bytes) for the run.

        It is encoded to PNG on the sender thread, stored by the server as a file and shown by URL.
        Never raises: one that cannot be encoded, or that the server refuses (too large), is skipped.
        """
        if not isinstance(name, str) or not isinstance(caption, str | None):
            warn_once(
                "image-arg",
                f"trainpilot: run.log_image() takes a str name and caption, got {type(name).__name__} "
                f"and {type(caption).__name__}; skipped",
            )
            return
        self._put(
            ("image", self._step(step, max(0, self._next_step - 1)), time.time(), (name, image, caption))
        )

    def log_recorded(self, data: dict[str, Any], *, step: int, ts: float, seq: int) -> None:
        """Queue metrics recorded elsewhere (an importer, a log tailer) with their own wall time and a
        seq that is the same every time the same record is read, so reading it twice stores it once."""
        try:
            snapshot, ts, seq = dict(data), float(ts), int(seq)
            usable = math.isfinite(ts) and 0 <= seq <= MAX_STEP
        except Exception:
            usable = False
        if not usable:
            warn_once(
                "recorded-arg",
                "trainpilot: run.log_recorded() takes a dict, a finite ts and a seq in 0..2**63-1; skipped",
            )
            return
        self._put(("metrics", self._step(step, self._next_step), ts, snapshot, seq))

    # -- control --------------------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once a stop command arrived: finish the step, save what matters, call `finish()`."""
        return self._control.stop

    @property
    def paused(self) -> bool:
        return self._control.paused

    def on_control(self, action: str, handler: Handler) -> None:
        """Call `handler(value)` on the training thread when `action` is applied (set_lr: the new lr).

        ``checkpoint`` and ``set_lr`` are refused unless a handler is registered; a handler that
        raises rejects the command with the exception's message. An unknown action or a handler that
        is not callable is warned about and ignored.
        """
        if not (isinstance(action, str) and action in ACTIONS and callable(handler)):
            warn_once(
                f"on_control:{_shown(action)}",
                f"trainpilot: run.on_control() takes one of {sorted(ACTIONS)} and a callable, got "
                f"{_shown(action)} and {type(handler).__name__}; ignored",
            )
            return
        self._control.on(action, handler)

    def wait_if_paused(self, timeout: float | None = None) -> None:
        """Apply pending commands here, on the training thread, and block while the run is paused.

        Under torchrun every rank must call it at the same step: it is a collective there.
        """
        if timeout is not None:
            timeout = _seconds(timeout, None, "run.wait_if_paused")
        self._control.wait(timeout)

    # -- the end ----------------------------------------------------------------------------------

    def finish(self, status: str | None = None, timeout: float = 30.0) -> None:
        """Send the final status and wait (up to `timeout`) until everything logged is delivered.

        Default status: ``stopped`` after a stop command, else ``finished`` (sent by rank 0 alone).
        Events the server could not take by then stay in the spool and are sent by the next trainpilot
        process on this data dir.
        """
        if self._finished:
            return
        if status is not None and not (isinstance(status, str) and status in RUN_STATUSES):
            warn_once(
                "finish-status",
                f"trainpilot: run.finish() takes a status in {sorted(RUN_STATUSES)}, got {_shown(status)}; "
                "using the default",
            )
            status = None
        self.log_event("status", {"status": status or ("stopped" if self._control.stop else "finished")})
        self.close(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything logged so far is delivered or in the spool on disk, where a kill -9 of
        this process cannot lose it; True if so within `timeout`. For a program that must know what it
        has handed over, as `trainpilot watch` before it saves how far it has read."""
        if self._finished:  # the sender has stopped: it handed over everything queued, unless stuck
            return not self._sender.is_alive()
        kept = Flush(kept=True)
        self._sender.put_marker(kept)
        return kept.done.wait(_seconds(timeout, 30.0, "run.flush"))

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (up to `timeout`) and stop the threads, without a final status.

        For runs whose training goes on elsewhere, e.g. one tailed from a TensorBoard directory.
        """
        if self._finished:
            return
        self._finished = True
        self._put = self._put_rank = self._after_finish
        flush = Flush()
        self._sender.put_marker(flush)
        if not flush.done.wait(_seconds(timeout, 30.0, "run.close")):
            log.warning(
                "trainpilot: not everything was delivered by finish(); %s kept for the next run",
                self._sender.spool.path,
            )
        self._sender.put_marker(CLOSE)
        self._sender.join(timeout=5)
        self._sender.transport.close()
        self._control.close()
        atexit.unregister(self._at_exit)

    def _after_finish(self, item: Any) -> None:
        """What log() and the others do once the run is finished: the sender is gone; say so once."""
        warn_once(
            f"finished:{self.id}",
            f"trainpilot: run {self.id} is finished: what is logged to it now is not sent",
        )

    def _at_exit(self) -> None:
        failed = getattr(sys, "last_value", None) is not None
        self.finish("failed" if failed else None, timeout=10.0)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.finish("failed" if exc_type is not None and exc_type is not KeyboardInterrupt else None)

    @property
    def delivered(self) -> int:
        """Events the server has acknowledged so far."""
        return self._sender.sent

    @property
    def dropped(self) -> int:
        """Events given up: refused by the server as invalid, or dropped from a spool over its budget."""
        return self._sender.dropped + self._sender.spool.dropped_events


def init(
    project: str = "default",
    name: str | None = None,
    config: dict[str, Any] | None = None,
    *,
    server: str | None = None,
    serve: bool = False,
    run_id: str | None = None,
    data_dir: str | None = None,
    token: str | None = None,
    port: int | None = None,
    control: bool = True,
) -> Run:
    """Start a run on `server` (default ``$TRAINPILOT_SERVER`` or http://127.0.0.1:8765).

    ``serve=True`` starts the server inside this process instead (on `port`, or a free one if the
    default is taken) and prints its URL. ``control=False`` skips listening for commands (a run
    mirrored from elsewhere cannot obey them). A server that is not up yet is fine: events are spooled
    under `data_dir` and delivered when it appears.

    Under torchrun call it on every rank: all of them share one run (its id comes from `run_id`,
    torchrun's job id, or else rank 0 by broadcast), which rank 0 logs and the others may tag with
    `log_rank`.
    """
    where = ranks()
    if serve and where.world_size > 1:
        raise RuntimeError(
            "trainpilot.init(serve=True) under torchrun would start a server per rank: "
            "start `trainpilot serve` and pass server= instead"
        )
    data_dir = data_dir or os.environ.get("TRAINPILOT_DATA_DIR", "./trainpilot-data")
    token = token or os.environ.get("TRAINPILOT_TOKEN") or None
    given_id = run_id is not None
    run_id = run_id or f"r-{secrets.token_hex(4)}"
    spec = {"id": run_id, "project": project, "name": name or run_id, "config": dict(config or {})}
    lockstep = None
    if where.world_size > 1:
        spec, lockstep = shared_spec(spec, given_id, where)
    connect: Callable[[], Transport]
    if serve:
        from trainpilot.sdk import embedded  # the server's code loads only to run it here

        connect = functools.partial(embedded.EmbeddedTransport, embedded.start_server(data_dir, token, port))
    else:
        url = server or os.environ.get("TRAINPILOT_SERVER", DEFAULT_SERVER)
        connect = functools.partial(HttpTransport, url, token)

    run = Run(connect(), spec, data_dir, token, control, where, lockstep)
    if where.local_rank == 0:  # one replayer per machine's data dir; the run has claimed its own spool
        orphans.replay(connect, data_dir)
    return run


def _copied(data: Any, key: str, takes: str) -> dict[str, Any] | None:
    """`dict(data)` (a mapping or pairs), or None with a warning once: the training loop goes on."""
    try:
        return dict(data)
    except Exception:  # anything a user's mapping raises
        warn_once(key, f"trainpilot: {takes}, got {type(data).__name__}")
        return None


def _discard(item: Any) -> None:
    """`log()` on ranks other than 0 under torchrun: rank 0 speaks for the run."""


def _seconds(value: Any, default: float | None, call: str) -> float | None:
    """A timeout as `threading` takes it: seconds >= 0, or None for no limit (also for inf). Anything
    else is warned about once and replaced by `default`: a bad timeout must not raise into the loop."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except Exception:
        seconds = math.nan
    if math.isnan(seconds):
        warn_once(
            f"timeout:{call}",
            f"trainpilot: {call}() takes a timeout in seconds, got {_shown(value)}; using {default}",
        )
        return default
    return None if seconds == math.inf else max(0.0, seconds)


def _shown(value: Any) -> str:
    """A value for a warning: short, and never an exception of its own (a user's __repr__ may raise)."""
    try:
        return repr(value)[:60]
    except Exception:
        return f"a {type(value).__name__}"
