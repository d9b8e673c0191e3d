"""Commands sent to a run: heard on a listener thread, applied on the training thread, acknowledged.

A command is a ``control`` event with status ``requested`` on the run's stream (docs/architecture.md,
"Control"). The listener takes ``stop`` at once and queues the rest for `wait()`, which the training
thread calls at its step boundary (`Run.wait_if_paused`): there the handlers run and each command is
acknowledged, ``applied`` or ``rejected`` with the reason, and a paused run blocks until resumed.

Under torchrun rank 0 listens and applies; at `wait()` every rank meets in a `Lockstep`
(distributed.py), which hands rank 0's commands and the pause/stop state they leave to the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from trainpilot.client.sse import SSEClient
from trainpilot.sdk.distributed import KEEPALIVE_S, Lockstep, Ranks, joined
from trainpilot.sdk.sender import warn_once

log = logging.getLogger("trainpilot")
Handler = Callable[[Any], Any]
News = tuple[list[dict[str, Any]], bool, bool, bool]  # rank 0's commands, paused, stop, done


class Say(Protocol):
    """How a command's outcome is told: `Run.log_event`."""

    def __call__(self, kind: str, data: dict[str, Any], step: int | None = None) -> None: ...


class Control:
    """One run's commands and the state they leave: `paused`, `stop`."""

    def __init__(
        self, say: Say, step: Callable[[], int], where: Ranks, together: bool, lockstep: Lockstep | None
    ) -> None:
        self.stop = False
        self.paused = False
        self._say = say
        self._step = step  # the run's next step: where acknowledgements and status changes land
        self._where = where
        self._together = together  # under torchrun: every rank meets at wait() to apply commands together
        self._lockstep = lockstep
        self._handlers: dict[str, list[Handler]] = {}
        self._commands: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._listener: SSEClient | None = None

    def listen(self, url: str, run_id: str, token: str | None, after: int | None) -> None:
        """Hear the run's commands from the event after `after` (None: from now) on a daemon thread."""
        self._listener = SSEClient(
            f"{url}/api/stream/metrics", {"run_id": run_id, "kinds": "control"}, token=token, after=after
        )
        threading.Thread(target=self._listen, name="trainpilot-control", daemon=True).start()

    def on(self, action: str, handler: Handler) -> None:
        self._handlers.setdefault(action, []).append(handler)

    def wait(self, timeout: float | None) -> None:
        """Apply pending commands on this thread, and block while paused (up to `timeout` seconds)."""
        if self._together:
            self._wait_together(timeout)
            return
        if not self._commands and not self.paused:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                while self._commands:
                    self._apply(self._commands.pop(0))
                if not self.paused or self.stop:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._cond.wait(remaining)

    def close(self) -> None:
        """Stop listening, and release whoever waits: a finished run is never held paused."""
        if self._listener is not None:
            self._listener.stop()
        self._together, self._lockstep = False, None  # see Lockstep: its group must go before exit
        with self._cond:
            self.stop = True
            self._cond.notify_all()

    def _wait_together(self, timeout: float | None) -> None:
        """Rank 0's commands, and the state they leave, reach every rank here, at the same step.

        Rank 0 applies and acknowledges them, then broadcasts them with the resulting pause/stop state;
        the others run their handlers and take that state, so no rank is left paused or stopped alone.
        `timeout` counts on rank 0, whose decision to return all ranks follow.
        """
        lockstep = self._lockstep or self._join_lockstep()
        if lockstep is None:
            self.wait(timeout)
            return
        if not lockstep.due():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        rank = self._where.rank
        while True:
            try:
                news = lockstep.share(self._news(deadline) if rank == 0 else None)
            except Exception as exc:  # a failed collective must not take the training down with it
                warn_once("lockstep", f"trainpilot: commands now act on this rank alone: {exc!r}")
                self._together = False
                return
            if news is None:
                return
            commands, paused, stop, done = news
            if rank != 0:
                for command in commands:
                    self._apply(command)
                self.paused, self.stop = paused, stop
            if done:
                return

    def _join_lockstep(self) -> Lockstep | None:
        self._lockstep = joined(self._where.rank)
        if self._lockstep is None:
            warn_once(
                "lockstep",
                f"trainpilot: WORLD_SIZE={self._where.world_size} but no torch.distributed process group "
                "at wait_if_paused(): commands act on rank 0 alone",
            )
            self._together = False
        return self._lockstep

    def _news(self, deadline: float | None) -> News | None:
        """Rank 0: apply what arrived (waiting for it while paused); None when there is nothing to say."""
        with self._cond:
            if self.paused and not self._commands and not self.stop:
                remaining = KEEPALIVE_S if deadline is None else deadline - time.monotonic()
                self._cond.wait(max(0.0, min(KEEPALIVE_S, remaining)))
            commands, self._commands = self._commands, []
        for command in commands:
            self._apply(command)
        if not commands and not self.paused and not self.stop:
            return None
        timed_out = deadline is not None and time.monotonic() >= deadline
        return commands, self.paused, self.stop, not self.paused or self.stop or timed_out

    def _apply(self, command: dict[str, Any]) -> None:
        action = command["action"]
        reason = None
        if action == "pause" and self.paused:
            reason = "already paused"
        elif action == "resume" and not self.paused:
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
                self.paused = True
                self._say("status", {"status": "paused"}, step=self._step())
            elif action == "resume":
                self.paused = False
                self._say("status", {"status": "running"}, step=self._step())
            elif action == "stop":  # only under torchrun; alone, the listener stops the run at once
                self.stop = True
        self._acknowledge(command, reason, result)

    def _acknowledge(self, command: dict[str, Any], reason: str | None, result: Any = None) -> None:
        ack: dict[str, Any] = {
            "command_id": command["id"],
            "action": command["action"],
            "status": "rejected" if reason else "applied",
            "step": self._step(),
        }
        if command.get("value") is not None:
            ack["value"] = command["value"]
        if reason:
            ack["reason"] = reason
        if isinstance(result, int | float | str | bool):
            ack["result"] = result
        if reason and self._where.rank != 0:  # rank 0's acknowledgement speaks for the run: say it here
            log.warning("trainpilot: rank %d rejected %s: %s", self._where.rank, command["action"], reason)
        self._say("control", ack, step=self._step())

    def _listen(self) -> None:
        """Receive the run's commands; stop takes effect at once, the rest at `wait()`."""
        assert self._listener is not None
        for event in self._listener:
            envelope = event.data if isinstance(event.data, dict) else {}
            data = envelope.get("data") or {}
            if event.name != "control" or data.get("status") != "requested":
                continue
            command = {**data, "id": event.id}
            with self._cond:
                if command["action"] == "stop" and not self._together:
                    self.stop = True
                    self._acknowledge(command, None)
                else:
                    self._commands.append(command)
                self._cond.notify_all()
