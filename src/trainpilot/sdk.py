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
and are applied on the training thread at `wait_if_paused()`, each acknowledged on the stream.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from trainpilot.events import ACTIONS
from trainpilot.exceptions import TransportError
from trainpilot.sender import CLOSE, Flush, Sender, warn_once
from trainpilot.spool import Spool, orphans
from trainpilot.sse_client import SSEClient
from trainpilot.transport import EmbeddedTransport, HttpTransport, Transport

log = logging.getLogger("trainpilot")
DEFAULT_SERVER = "http://127.0.0.1:8765"
Handler = Callable[[Any], Any]


class Run:
    """A live run. Create it with `trainpilot.init`."""

    def __init__(
        self,
        transport: Transport,
        spec: dict[str, Any],
        data_dir: str,
        token: str | None,
        server: Any = None,
        control: bool = True,
    ) -> None:
        self.id: str = spec["id"]
        self.project: str = spec["project"]
        self.name: str = spec["name"]
        self.config: dict[str, Any] = spec["config"]
        self.url = transport.url
        self._server = server
        self._next_step = 0
        self._finished = False
        self._stop = False
        self._paused = False
        self._handlers: dict[str, list[Handler]] = {}
        self._commands: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._sender = Sender(
            transport, Spool.for_run(data_dir, self.id), spec, seq_base=time.time_ns() // 1000
        )
        self._put = self._sender.queue.put
        cursor = self._create_now(transport, spec)
        self._sender.start()
        self._listener: SSEClient | None = None
        if control:
            self._listener = SSEClient(
                f"{self.url}/api/stream/metrics",
                {"run_id": self.id, "kinds": "control"},
                token=token,
                after=cursor,
            )
            threading.Thread(target=self._listen, name="trainpilot-control", daemon=True).start()
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
        try:
            snapshot = dict(data)  # the caller may reuse its dict; the sender reads this copy later
        except (TypeError, ValueError):
            warn_once("log-arg", f"trainpilot: run.log() takes a dict of metrics, got {type(data).__name__}")
            return
        if step is None:
            step = self._next_step
        elif type(step) is not int or step < 0:
            step = self._coerce_step(step)
        self._next_step = step + 1
        self._put(("metrics", step, time.time(), snapshot))

    def _coerce_step(self, step: Any) -> int:
        """A step the server takes (a non-negative int): numpy/tensor ints become ints, nonsense the
        next step. The server refuses a whole batch for one bad step, so it must not leave here."""
        try:
            value = int(step)
        except Exception:
            value = -1
        if value < 0:
            warn_once("log-step", f"trainpilot: step {step!r} is not a non-negative integer; using the next")
            return self._next_step
        return value

    def log_event(self, kind: str, data: dict[str, Any], step: int | None = None) -> None:
        """Queue an event of another kind: ``status``, ``media``, ``log``, ``insight``."""
        self._put((kind, step, time.time(), dict(data)))

    def log_image(self, name: str, image: Any, step: int | None = None, caption: str | None = None) -> None:
        """Queue an image (PIL image, HxW[xC] or CxHxW array/tensor, or PNG/JPEG bytes) for the run.

        It is encoded to PNG on the sender thread, stored by the server as a file and shown by URL.
        """
        step = max(0, self._next_step - 1) if step is None else step
        self._put(("image", step, time.time(), (name, image, caption)))

    def log_recorded(self, data: dict[str, Any], *, step: int, ts: float, seq: int) -> None:
        """Queue metrics recorded elsewhere (an importer, a log tailer) with their own wall time and a
        seq that is the same every time the same record is read, so reading it twice stores it once."""
        self._put(("metrics", step, ts, dict(data), seq))

    # -- control --------------------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once a stop command arrived: finish the step, save what matters, call `finish()`."""
        return self._stop

    @property
    def paused(self) -> bool:
        return self._paused

    def on_control(self, action: str, handler: Handler) -> None:
        """Call `handler(value)` on the training thread when `action` is applied (set_lr: the new lr).

        ``checkpoint`` and ``set_lr`` are refused unless a handler is registered; a handler that
        raises rejects the command with the exception's message.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}: expected one of {sorted(ACTIONS)}")
        self._handlers.setdefault(action, []).append(handler)

    def wait_if_paused(self, timeout: float | None = None) -> None:
        """Apply pending commands here, on the training thread, and block while the run is paused."""
        if not self._commands and not self._paused:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                while self._commands:
                    self._apply(self._commands.pop(0))
                if not self._paused or self._stop:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _apply(self, command: dict[str, Any]) -> None:
        action = command["action"]
        reason = None
        if action == "pause" and self._paused:
            reason = "already paused"
        elif action == "resume" and not self._paused:
            reason = "not paused"
        elif action in ("checkpoint", "set_lr") and not self._handlers.get(action):
            reason = f"this run registered no {action!r} handler (run.on_control)"
        result = None
        if reason is None:
            try:
                for handler in self._handlers.get(action, []):
                    result = handler(command.get("value"))
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            if action == "pause":
                self._paused = True
                self.log_event("status", {"status": "paused"}, step=self._next_step)
            elif action == "resume":
                self._paused = False
                self.log_event("status", {"status": "running"}, step=self._next_step)
        self._acknowledge(command, reason, result)

    def _acknowledge(self, command: dict[str, Any], reason: str | None, result: Any = None) -> None:
        ack: dict[str, Any] = {
            "command_id": command["id"],
            "action": command["action"],
            "status": "rejected" if reason else "applied",
            "step": self._next_step,
        }
        if command.get("value") is not None:
            ack["value"] = command["value"]
        if reason:
            ack["reason"] = reason
        if isinstance(result, int | float | str | bool):
            ack["result"] = result
        self.log_event("control", ack, step=self._next_step)

    def _listen(self) -> None:
        """Receive this run's commands; stop takes effect at once, the rest at `wait_if_paused()`."""
        assert self._listener is not None
        for event in self._listener:
            envelope = event.data if isinstance(event.data, dict) else {}
            data = envelope.get("data") or {}
            if event.name != "control" or data.get("status") != "requested":
                continue
            command = {**data, "id": event.id}
            with self._cond:
                if command["action"] == "stop":
                    self._stop = True
                    self._acknowledge(command, None)
                else:
                    self._commands.append(command)
                self._cond.notify_all()

    # -- the end ----------------------------------------------------------------------------------

    def finish(self, status: str | None = None, timeout: float = 30.0) -> None:
        """Send the final status and wait (up to `timeout`) until everything logged is delivered.

        Default status: ``stopped`` after a stop command, else ``finished``. Events the server could
        not take by then stay in the spool and are sent by the next trainpilot process on this data dir.
        """
        if self._finished:
            return
        self.log_event("status", {"status": status or ("stopped" if self._stop else "finished")})
        self.close(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (up to `timeout`) and stop the threads, without a final status.

        For runs whose training goes on elsewhere, e.g. one tailed from a TensorBoard directory.
        """
        if self._finished:
            return
        self._finished = True
        flush = Flush()
        self._put(flush)
        if not flush.done.wait(timeout):
            log.warning(
                "trainpilot: server unreachable at finish; %s kept for the next run", self._sender.spool.path
            )
        self._put(CLOSE)
        self._sender.join(timeout=5)
        self._sender.transport.close()
        if self._listener is not None:
            self._listener.stop()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        atexit.unregister(self._at_exit)

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
    """
    data_dir = data_dir or os.environ.get("TRAINPILOT_DATA_DIR", "./trainpilot-data")
    token = token or os.environ.get("TRAINPILOT_TOKEN") or None
    run_id = run_id or f"r-{secrets.token_hex(4)}"
    spec = {"id": run_id, "project": project, "name": name or run_id, "config": dict(config or {})}
    embedded = _start_server(data_dir, token, port) if serve else None
    url = server or os.environ.get("TRAINPILOT_SERVER", DEFAULT_SERVER)

    def connect() -> Transport:
        return EmbeddedTransport(embedded) if embedded is not None else HttpTransport(url, token)

    _replay_orphans(connect, data_dir)
    return Run(connect(), spec, data_dir, token, embedded, control)


def _start_server(data_dir: str, token: str | None, port: int | None) -> Any:
    from trainpilot.server.runner import ServerThread, free_port, port_free
    from trainpilot.settings import Settings

    settings = Settings.from_env(data_dir=data_dir, token=token, port=port, log_level="warning")
    if port is None and not port_free(settings.host, settings.port):
        settings = Settings.from_env(
            data_dir=data_dir, token=token, port=free_port(settings.host), log_level="warning"
        )
    server = ServerThread(settings).start()
    print(
        f"trainpilot: serving on {server.url}/ (stream {server.url}/api/stream/metrics)",
        file=sys.stderr,
    )
    return server


def _replay_orphans(connect: Callable[[], Transport], data_dir: str) -> None:
    """Spools left by processes that died before delivering: send them now, in the background."""
    spools = list(orphans(data_dir))
    if not spools:
        return

    def replay() -> None:
        transport = connect()
        for spool in spools:
            stem = spool.path.stem
            sender = Sender(
                transport, spool, {"id": stem, "project": "default", "name": stem, "config": {}}, 0
            )
            while True:  # a daemon thread: it retries with the sender's backoff until done or exit
                sender._replay()
                if not spool:
                    break
                time.sleep(max(0.0, sender._retry_at - time.monotonic()))
            spool.close()
        transport.close()

    threading.Thread(target=replay, name="trainpilot-replay", daemon=True).start()
