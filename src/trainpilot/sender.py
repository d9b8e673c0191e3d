"""The SDK's background sender: batches what `run.log()` queued, sends it, spools it when it cannot.

Batching is adaptive, not timed (DESIGN.md): each pass takes everything queued since the last one
(one event at low rate, thousands under load), so "live" costs no fixed flush delay. Values are
cleaned here, off the training thread: tensors and numpy scalars become floats, NaN/Inf become the
wire's markers. A batch that cannot be delivered goes to the spool, in order, and is replayed with
backoff; each event carries a per-run `seq`, so a batch sent twice is stored once.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any

from trainpilot.exceptions import TransportError
from trainpilot.spool import Spool
from trainpilot.transport import Transport

log = logging.getLogger("trainpilot")
MAX_EVENTS_PER_REQUEST = 10_000
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 10.0


def _drain(q: queue.SimpleQueue[Any]) -> list[Any]:
    items = []
    try:
        while True:
            items.append(q.get_nowait())
    except queue.Empty:
        return items


class Flush:
    """A marker on the queue: set once everything queued before it is delivered."""

    def __init__(self) -> None:
        self.done = threading.Event()


CLOSE = object()


def clean_metrics(data: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Flat name -> float; nested dicts become ``a/b``; NaN/Inf become ``"nan"``/``"inf"``/``"-inf"``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(clean_metrics(value, name + "/"))
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            warn_once(
                f"skip:{name}",
                f"trainpilot: metric {name!r} is not a number ({type(value).__name__}); skipped",
            )
            continue
        out[name] = (
            number
            if math.isfinite(number)
            else ("nan" if number != number else "inf" if number > 0 else "-inf")
        )
    return out


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log a problem once per key: the training loop must not drown in repeats."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


class Sender(threading.Thread):
    def __init__(self, transport: Transport, spool: Spool, run_spec: dict[str, Any], seq_base: int) -> None:
        super().__init__(name="trainpilot-sender", daemon=True)
        self.transport = transport
        self.spool = spool
        self.run_spec = run_spec
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.created = False
        self.sent = 0
        self.dropped = 0
        self._seq = seq_base
        self._backoff = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._flushes: list[Flush] = []

    @property
    def run_id(self) -> str:
        run_id: str = self.run_spec["id"]
        return run_id

    def run(self) -> None:
        closing = False
        while not closing:
            items = self._take()
            events = []
            for item in items:
                if type(item) is tuple:
                    events.append(self._envelope(item))
                elif item is CLOSE:
                    closing = True
                else:
                    self._flushes.append(item)
            try:
                self._deliver(events)
            except Exception as exc:  # never let telemetry kill the thread the run depends on
                warn_once(f"bug:{type(exc).__name__}", f"trainpilot: sender error {exc!r}; batch dropped")
                self.dropped += len(events)
            if not self.spool:
                for flush in self._flushes:
                    flush.done.set()
                self._flushes.clear()
        self.spool.close()

    def _take(self) -> list[Any]:
        """Block until something is queued (or a spooled retry is due), then take everything queued."""
        timeout = max(0.0, self._retry_at - time.monotonic()) if self.spool else None
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *_drain(self.queue)]

    def _envelope(self, item: tuple[Any, ...]) -> dict[str, Any]:
        """An item queued by `log()` (kind, step, ts, data), or with its own seq as a fifth element."""
        if len(item) == 5:
            kind, step, ts, data, seq = item
        else:
            kind, step, ts, data = item
            self._seq += 1
            seq = self._seq
        return {
            "seq": seq,
            "kind": kind,
            "ts": ts,
            "step": step,
            "data": clean_metrics(data) if kind == "metrics" else data,
        }

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), MAX_EVENTS_PER_REQUEST):
            batch = events[start : start + MAX_EVENTS_PER_REQUEST]
            if self.spool or not self._send(batch):
                self.spool.append({"run": self.run_spec, "events": batch})
        if self.spool and time.monotonic() >= self._retry_at:
            self._replay()

    def _send(self, events: list[dict[str, Any]], run_spec: dict[str, Any] | None = None) -> bool:
        """True when delivered or refused for good; False when it should be spooled and retried."""
        spec = run_spec or self.run_spec
        try:
            if not self.created or spec is not self.run_spec:
                self.transport.create_run(spec)
                self.created = self.created or spec is self.run_spec
            self.transport.send(spec["id"], events)
        except TransportError as exc:
            if exc.retryable:
                if "404" in str(exc) or "no run" in str(exc):
                    self.created = False
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
                warn_once(
                    "down",
                    f"trainpilot: server unavailable ({exc}); spooling to {self.spool.path} "
                    "and retrying; training continues",
                )
                return False
            self.dropped += len(events)
            warn_once(f"refused:{exc}", f"trainpilot: server refused a batch, dropped: {exc}")
            return True
        self.sent += len(events)
        return True

    def _replay(self) -> None:
        for batch, offset in self.spool.pending():
            spec = batch.get("run") if isinstance(batch.get("run"), dict) else self.run_spec
            assert spec is not None
            if spec.get("id") == self.run_id:
                spec = self.run_spec
            if not self._send(batch.get("events") or [], spec):
                return
            self.spool.commit(offset)
        if not self.spool:
            self._backoff = BACKOFF_MIN_S
            _warned.discard("down")
            log.info("trainpilot: server reachable again; spooled events delivered")
