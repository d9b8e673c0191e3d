"""The SDK's background sender: batches what `run.log()` queued, sends it, spools it when it cannot.

Batching is adaptive, not timed (DESIGN.md): each pass takes everything queued since the last one
(one event at low rate, thousands under load), so "live" costs no fixed flush delay. Passes start at
most every `SEND_INTERVAL_S` (and, while training computes, later when the last pass cost more CPU
than `CPU_SHARE` of that time allows), so a loop logging faster sends several steps per request. Values are
cleaned here, off the training thread: tensors and numpy scalars become floats, NaN/Inf become the
wire's markers. A batch that cannot be delivered goes to the spool, in order, and is replayed with
backoff; each event carries a per-run `seq`, so a batch sent twice is stored once. A run that has
nothing to say for `HEARTBEAT_S` sends an empty batch, so the server can tell a quiet run (a long
validation) from a dead process.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from trainpilot.exceptions import TransportError
from trainpilot.extras import extra
from trainpilot.sdk.spool import Spool
from trainpilot.sdk.transport import Transport
from trainpilot.wire import MAX_KEY_LENGTH

log = logging.getLogger("trainpilot")
MAX_EVENTS_PER_REQUEST = 10_000
SPILL_AT = 20_000  # items waiting in memory while a slow server answers: past this, go to the spool
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 10.0
# Sends start at most this often: events that come faster gather into one batch (one request and one
# commit for several steps), so a fast training loop pays for telemetry per batch, not per step. A
# quiet run's event still goes at once; the most it waits is this interval (TRAINPILOT_SEND_INTERVAL_MS).
SEND_INTERVAL_S = float(os.environ.get("TRAINPILOT_SEND_INTERVAL_MS", "20")) / 1000
# When the loop logs more than FAST_RATE events a second and the rest of the process (training) keeps
# more than BUSY of a core busy, the sender's share of one core at most: a pass that cost c seconds of
# this thread's CPU is followed by one no sooner than c / CPU_SHARE after it began, so however fast the
# loop logs, sending takes at most this much of training's core (bench case 2). At most MAX_GATHER_S
# apart (four updates a second; TensorBoard reloads every 30 s), so live stays live. A process that
# logs fast but computes little (nothing to take CPU from) keeps passes SEND_INTERVAL_S apart.
CPU_SHARE, MAX_GATHER_S, FAST_RATE, BUSY = 0.005, 0.25, 100.0, 0.5
HEARTBEAT_S = float(os.environ.get("TRAINPILOT_RUN_HEARTBEAT_S", "10"))  # well inside the server's 60 s


def _drain(q: queue.SimpleQueue[Any]) -> list[Any]:
    items = []
    try:
        while True:
            items.append(q.get_nowait())
    except queue.Empty:
        return items


class Flush:
    """A marker on the queue: set once everything queued before it is delivered, or, when `kept`,
    delivered or written to the spool (where a kill -9 of this process cannot lose it)."""

    def __init__(self, kept: bool = False) -> None:
        self.done = threading.Event()
        self.kept = kept


CLOSE = object()


def clean_metrics(data: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Flat name -> float; nested dicts become ``a/b``; NaN/Inf become ``"nan"``/``"inf"``/``"-inf"``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(clean_metrics(value, name + "/"))
            continue
        if not 0 < len(name) <= MAX_KEY_LENGTH:
            # the server refuses a whole batch for one bad name: drop just this metric
            warn_once(
                f"name:{name[:40]}",
                f"trainpilot: metric name {name[:40]!r} must be 1 to {MAX_KEY_LENGTH} characters; skipped",
            )
            continue
        try:
            number = float(value)
        except Exception:  # user objects' __float__ may raise anything (OverflowError for huge ints)
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
    def __init__(
        self, transport: Transport, spool: Spool, run_spec: dict[str, Any], seq_base: int, seq_stride: int = 1
    ) -> None:
        super().__init__(name="trainpilot-sender", daemon=True)
        self.transport = transport
        self.spool = spool
        self.run_spec = run_spec
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.created = False
        self.sent = 0
        self.dropped = 0
        self._seq = seq_base
        self._seq_stride = seq_stride  # the ranks of one run count seqs interleaved: r, r + n, r + 2n...
        self._backoff = BACKOFF_MIN_S
        self.retry_at = 0.0  # when the spool is tried again (time.monotonic)
        self._flushes: list[Flush] = []
        self._heard_at = time.monotonic()  # the last time the server took something from us
        self._next_pass_at = 0.0  # no pass starts before this (time.monotonic)
        self._began_at = self._cpu_at = self._process_at = 0.0  # the last pass's start: wall, thread, process
        self._urged = threading.Event()  # a flush or close is queued: wait no more for the next pass

    @property
    def run_id(self) -> str:
        run_id: str = self.run_spec["id"]
        return run_id

    def run(self) -> None:
        closing = False
        while not closing:
            items = self._take()
            began, cpu, process = time.monotonic(), time.thread_time(), time.process_time()
            if not items and not self.spool:
                self._heartbeat()
            events = []
            for item in items:
                try:
                    if type(item) is tuple and item[0] == "image":
                        self._deliver_image(item)
                    elif type(item) is tuple:
                        events.append(self._envelope(item))
                    elif item is CLOSE:
                        closing = True
                    else:
                        self._flushes.append(item)
                except Exception as exc:  # one bad event must not kill the thread or its batch
                    warn_once(f"bad:{type(exc).__name__}", f"trainpilot: event dropped: {exc!r}")
                    self.dropped += 1
            try:
                self._deliver(events)
            except Exception as exc:  # never let telemetry kill the thread the run depends on
                warn_once(f"bug:{type(exc).__name__}", f"trainpilot: sender error {exc!r}; batch dropped")
                self.dropped += len(events)
            for flush in self._flushes:  # this pass sent or spooled everything queued before them
                if flush.kept or not self.spool:
                    flush.done.set()
            self._flushes = [flush for flush in self._flushes if not flush.done.is_set()]
            if items:
                self._pace(began, cpu, process, len(events))
        self.spool.close()

    def _pace(self, began: float, cpu: float, process: float, events: int) -> None:
        """When the next pass may start, given when this one began (wall, this thread's CPU, the
        process's CPU). A run logging at a live rate (a few events a second, jitter included) gets the
        next pass `SEND_INTERVAL_S` after this one, so each event is live; so does a process that is
        not computing. A training loop logging faster than `FAST_RATE` has sending held to
        `CPU_SHARE` of a core."""
        since = began - self._began_at
        training = (process - self._process_at) - (cpu - self._cpu_at)  # the other threads' CPU
        gap = SEND_INTERVAL_S
        if events > FAST_RATE * since and training > BUSY * since:
            gap = max(SEND_INTERVAL_S, min((time.thread_time() - cpu) / CPU_SHARE, MAX_GATHER_S))
        self._next_pass_at = began + gap
        self._began_at, self._cpu_at, self._process_at = began, cpu, process

    def put_marker(self, marker: Flush | object) -> None:
        """Queue a `Flush` or `CLOSE`, and cut short the wait for the next pass: finish() is prompt."""
        self.queue.put(marker)
        self._urged.set()

    def _take(self) -> list[Any]:
        """Wait until the next pass may start (`CPU_SHARE`), then block until something is queued (or
        a spooled retry is due) and take everything queued.

        Waiting first means a loop that logs faster than passes start costs one wake-up a pass, not
        two: each takes the training thread's core and caches (bench case 2). A quiet run's event
        still goes at once when it comes after the interval.
        """
        gather = self._next_pass_at - time.monotonic()
        if gather > 0:
            self._urged.wait(gather)
            self._urged.clear()
        now = time.monotonic()
        timeout = max(0.0, (self.retry_at if self.spool else self._heard_at + HEARTBEAT_S) - now)
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *_drain(self.queue)]

    def _backlogged(self) -> bool:
        """A slow server must not make memory grow: what waits beyond `SPILL_AT` goes to disk."""
        return self.queue.qsize() > SPILL_AT

    def _heartbeat(self) -> None:
        if time.monotonic() - self._heard_at >= HEARTBEAT_S:
            self._attempt(lambda: self.transport.send(self.run_id, []), self.run_spec, 0)
            self._heard_at = time.monotonic()  # tried: the next one in HEARTBEAT_S, up or down

    def _envelope(self, item: tuple[Any, ...]) -> dict[str, Any]:
        """An item queued by `log()` (kind, step, ts, data), or with its own seq as a fifth element."""
        if len(item) == 5:
            kind, step, ts, data, seq = item
        else:
            kind, step, ts, data = item
            self._seq += self._seq_stride
            seq = self._seq
        event = {
            "seq": seq,
            "kind": kind,
            "ts": ts,
            "step": step,
            "data": clean_metrics(data) if kind == "metrics" else data,
        }
        if kind != "metrics":  # the caller's own data: if it is not JSON, it must fail here, alone
            orjson.dumps(event)
        return event

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), MAX_EVENTS_PER_REQUEST):
            batch = events[start : start + MAX_EVENTS_PER_REQUEST]
            if self.spool or self._backlogged() or not self._send(batch):
                self.spool.append({"run": self.run_spec, "events": batch})
        if self.spool and time.monotonic() >= self.retry_at:
            self.replay()

    def _deliver_image(self, item: tuple[Any, ...]) -> None:
        _, step, _ts, (name, image, caption) = item
        try:
            body = encode_image(image)
        except Exception as exc:
            warn_once(f"image:{name}", f"trainpilot: image {name!r} could not be encoded ({exc}); skipped")
            return
        media = {"name": name, "step": step, "caption": caption, "png": base64.b64encode(body).decode()}
        if self.spool or not self._upload(media, self.run_spec):
            self.spool.append({"run": self.run_spec, "media": media})

    def _send(self, events: list[dict[str, Any]], run_spec: dict[str, Any] | None = None) -> bool:
        """True when delivered or refused for good; False when it should be spooled and retried.

        A batch the server refuses as invalid is split in halves and sent again, so one bad event
        costs only itself, never its neighbours.
        """
        spec = run_spec or self.run_spec
        refused: list[bool] = []

        def deliver() -> None:
            try:
                self.transport.send(spec["id"], events)
            except TransportError as exc:
                if exc.refused and len(events) > 1:
                    refused.append(True)
                    return
                raise

        if not self._attempt(deliver, spec, len(events)):
            return False
        if refused:
            self.sent -= len(events)
            half = len(events) // 2
            return self._send(events[:half], spec) and self._send(events[half:], spec)
        return True

    def _upload(self, media: dict[str, Any], spec: dict[str, Any]) -> bool:
        """`_send` for one image."""
        body = base64.b64decode(media["png"])
        run_id, name, step, caption = spec["id"], media["name"], media.get("step"), media.get("caption")
        return self._attempt(lambda: self.transport.upload_media(run_id, name, step, caption, body), spec, 1)

    def _attempt(self, deliver: Callable[[], None], spec: dict[str, Any], count: int) -> bool:
        """Deliver (creating the run first where needed). True when done with it: delivered, or refused
        as invalid and dropped; False when it must wait in the spool: the server is away or answers 5xx,
        does not know the run, or refuses the token, which is no fault of the batch."""
        try:
            if not self.created or spec is not self.run_spec:
                self.transport.create_run(spec)
                self.created = self.created or spec is self.run_spec
            deliver()
        except TransportError as exc:
            if exc.refused:
                self.dropped += count
                warn_once(f"refused:{exc}", f"trainpilot: server refused a batch, dropped: {exc}")
                return True
            if exc.run_not_found:
                self.created = False
            self.retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            if exc.token_refused:
                warn_once(
                    "token",
                    f"trainpilot: {self.transport.url} refused the token ({exc}). Set TRAINPILOT_TOKEN (or "
                    f"trainpilot.init(token=...)) to the server's write token; until it is accepted, batches "
                    f"are kept in {self.spool.path} and retried; training continues",
                )
            else:
                warn_once(
                    "down",
                    f"trainpilot: server unavailable ({exc}); spooling to {self.spool.path} "
                    "and retrying; training continues",
                )
            return False
        self.sent += count
        self._heard_at = time.monotonic()
        return True

    def replay(self) -> None:
        """Send what the spool holds, in order, until it is empty or a batch must wait again."""
        for batch, offset in self.spool.pending():
            spec = batch.get("run") if isinstance(batch.get("run"), dict) else self.run_spec
            assert spec is not None
            if spec.get("id") == self.run_id:
                spec = self.run_spec
            media = batch.get("media")
            delivered = (
                self._upload(media, spec)
                if isinstance(media, dict)
                else self._send(batch.get("events") or [], spec)
            )
            if not delivered:
                return
            self.spool.commit(offset)
            if self._backlogged():
                return  # spool what waits in memory first; the replay goes on next pass
        if not self.spool:
            self._backoff = BACKOFF_MIN_S
            _warned.difference_update(("down", "token"))  # the next outage or refusal is news again
            log.info("trainpilot: server reachable again; spooled events delivered")


def encode_image(image: Any) -> bytes:
    """PNG bytes from PNG/JPEG bytes, a PIL image, or an HxW / HxWxC / CxHxW array or tensor."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    with extra("images", "logging an image that is not PNG/JPEG bytes"):
        import numpy as np
        from PIL import Image

    if isinstance(image, Image.Image):
        picture = image
    else:
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # CxHxW (torch) -> HxWxC
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8:
            array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # drawn black
            low, high = float(array.min()), float(array.max())
            scale = 1.0 if low >= 0 and high <= 1 else (high - low) or 1.0
            array = ((array - (0 if scale == 1.0 else low)) / scale * 255).clip(0, 255).astype(np.uint8)
        picture = Image.fromarray(array)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
