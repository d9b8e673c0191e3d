"""The in-process broker: one shared ring of encoded frames, a cursor per subscriber.

`publish` appends each event to the ring; it is encoded once, by the first message that carries
it (`_encode_from`), so an event nobody reads (a run trained with no dashboard open) is never
encoded. One broadcaster pass then walks the subscribers and writes to each everything from its
cursor to the head as ONE message (under load many events coalesce into one write). Subscribers
that share a filter and a cursor share the very same message object. A subscriber whose cursor
falls off the ring's tail (it stopped reading while the ring moved on) gets a `resync` notice and
is closed: it never slows the others and never holds more than one pending message. Reconnecting
with the notice's id replays from the store.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
from typing import Any

from trainpilot.broker.subscriber import (
    DONE,
    Filter,
    Format,
    Subscriber,
    encoded,
    events_message,
    framed,
    resume,
    resync_message,
    step,
    writable,
)
from trainpilot.events import Event
from trainpilot.store import Store
from trainpilot.wire import sse_comment

Frame = tuple[Event, bytes, bytes]
# A frame's bytes until a message first needs them. Encoding is 2.6 µs an event of 8 metrics (ad hoc
# timeit): about a tenth of the server's CPU for an ingested point, spent only if someone reads it.
LATER = b""
REPLAY_PAGE = 500
MAX_GROUPS = 4096


def _size(frame: Frame) -> int:
    return len(frame[1]) + len(frame[2])


HEARTBEAT = {"type": "http.response.body", "body": sse_comment("keepalive"), "more_body": True}


class MemoryBroker:
    def __init__(
        self,
        store: Store,
        *,
        ring_size: int = 16384,
        ring_bytes: int = 16 * 2**20,
        heartbeat_s: float = 15.0,
        stall_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.ring_size = ring_size
        self.ring_bytes = ring_bytes
        self.heartbeat_s = heartbeat_s
        self.stall_timeout_s = stall_timeout_s
        self.max_lag = ring_size // 4
        self._tasks: set[asyncio.Future[None]] = set()
        self._ids: list[int] = []
        self._frames: list[Frame] = []
        self._sizes: list[int] = []  # each frame's bytes, 0 until it is encoded
        self._bytes = 0  # their sum
        self._later = 0  # frames not encoded yet (LATER)
        self._floor = 0  # ids <= floor are no longer in the ring (or were never in it)
        self._subs: set[Subscriber] = set()
        self._groups: dict[tuple[Filter, Format], int] = {}  # see _group
        self._numbers = itertools.count()
        self._scheduled = False
        self._heartbeat: asyncio.Task[None] | None = None
        # writes: every write; direct: those that went straight to the transport (subscriber.direct)
        self.stats = {
            "published": 0,
            "encoded": 0,  # frames encoded, each once, when a message first carried it
            "writes": 0,
            "direct": 0,
            "framed": 0,  # frames built for direct writes: one per group and cursor a pass, shared
            "resyncs": 0,
            "handoffs": 0,
            "stalled": 0,
        }

    @property
    def head(self) -> int:
        return self._ids[-1] if self._ids else self._floor

    async def start(self, head_id: int) -> None:
        self._floor = head_id
        self._heartbeat = asyncio.create_task(self._beat())

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for sub in list(self._subs):
            self._drop(sub, "server shutting down")

    def health(self) -> dict[str, Any]:
        return {"ok": True, "backend": "memory"}

    def counts(self) -> dict[str, int]:
        counts = {"sse": 0, "ws": 0}
        for sub in self._subs:
            counts[sub.format] += 1
        return counts

    # -- publish: encode once, schedule one pass --------------------------------------------------

    def publish(self, events: list[Event]) -> None:
        self._ids.extend([event.id for event in events])
        self._frames.extend([(event, LATER, LATER) for event in events])
        self._sizes.extend([0] * len(events))
        self._later += len(events)
        self.stats["published"] += len(events)
        if len(self._ids) > self.ring_size or self._bytes > self.ring_bytes:
            self._trim()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._broadcast)

    def _trim(self) -> None:
        """Drop the oldest frames down to 3/4 of both bounds at once: amortised O(1) per event."""
        cut = max(len(self._ids) - self.ring_size * 3 // 4, 0)
        sizes = self._sizes
        dropped = sum(sizes[:cut])
        while cut < len(self._ids) - 1 and self._bytes - dropped > self.ring_bytes * 3 // 4:
            dropped += sizes[cut]
            cut += 1
        if cut:
            self._bytes -= dropped
            if self._later:
                self._later -= sizes[:cut].count(0)  # a frame not encoded yet has no size
            self._floor = self._ids[cut - 1]
            del self._ids[:cut], self._frames[:cut], sizes[:cut]

    def _encode_from(self, start: int) -> None:
        """Encode the ring's frames from `start` on that no message has carried yet."""
        frames = self._frames
        for i in range(start, len(frames)):
            if frames[i][1] is LATER:
                frame = frames[i] = encoded(frames[i][0])
                self._sizes[i] = size = _size(frame)
                self._bytes += size
                self._later -= 1
                self.stats["encoded"] += 1
                if not self._later:
                    return

    # -- the broadcaster ----------------------------------------------------------------------------

    def _broadcast(self) -> None:
        """One pass: every idle subscriber gets everything from its cursor to the head, in one write.

        Subscribers of one group (filter and format) at one cursor share one message and its frame.
        The pass keys them by (group number, cursor), two ints: at 5,000 subscribers a key made of
        the Filter itself spent a quarter of the pass in its Python-level hash and equality (py-spy,
        ad hoc).
        """
        self._scheduled = False
        head = self.head
        shared: dict[tuple[int, int], list[Any]] = {}  # key -> [message or None, its frame or None]
        writes = direct = 0
        for sub in list(self._subs):
            cursor = sub.cursor
            if cursor >= head or sub.busy is not None:
                continue
            if cursor < self._floor:
                self._cut(sub)
                continue
            key = (sub.group, cursor)
            entry = shared.get(key)
            if entry is None:
                entry = shared[key] = [self._message_after(sub.filter, sub.format, cursor), None]
            sub.cursor = head
            message = entry[0]
            if message is None:
                continue
            writes += 1
            owner = sub.direct
            if owner is not None and writable(sub.format, owner):
                frame = entry[1]
                if frame is None:
                    frame = entry[1] = framed(message)
                    self.stats["framed"] += 1
                direct += 1
                try:
                    owner.transport.write(frame)
                except Exception:  # the connection went between the check and the write
                    self._drop(sub, "write failed")
            else:
                self._write(sub, message)
        self.stats["writes"] += writes
        self.stats["direct"] += direct
        if self._bytes > self.ring_bytes:  # the frames just encoded count from now on
            self._trim()

    def _message_after(self, flt: Filter, fmt: Format, cursor: int) -> dict[str, Any] | None:
        start = bisect.bisect_right(self._ids, cursor)
        if self._later:
            self._encode_from(start)
        frames = self._frames[start:]
        if flt != Filter():
            frames = [
                f if not flt.trims or p is f[0] else encoded(p)
                for f in frames
                if (p := flt.project(f[0])) is not None
            ]
        return events_message(fmt, frames) if frames else None

    def _write(self, sub: Subscriber, message: dict[str, Any]) -> None:
        """Write without a task when the socket can take it; hand off to a task only when it cannot.
        The caller counts the write in the stats."""
        coro = sub.send(message)
        try:
            waiting = step(coro)  # type: ignore[arg-type]
        except Exception:
            self._drop(sub, "write failed")
            return
        if waiting is not DONE:
            self.stats["handoffs"] += 1
            sub.busy = asyncio.create_task(self._drain(sub, coro, waiting))
            sub.busy_since = asyncio.get_running_loop().time()

    async def _drain(self, sub: Subscriber, coro: Any, waiting: Any) -> None:
        """A slow subscriber's own task: finish the pending write, catch up, then rejoin the pass.

        A subscriber still far behind once its socket drains has fallen off the live stream: it
        is cut with `resync` rather than sent a backlog the ring may no longer even hold.
        """
        try:
            await resume(coro, waiting)
            while sub.cursor < self.head:
                if (
                    sub.cursor < self._floor
                    or len(self._ids) - bisect.bisect_right(self._ids, sub.cursor) > self.max_lag
                ):
                    break
                head = self.head
                message = self._message_after(sub.filter, sub.format, sub.cursor)
                sub.cursor = head
                if message is not None:
                    await sub.send(message)
        except Exception:
            sub.busy = None
            self._drop(sub, "write failed")
            return
        sub.busy = None
        if sub.cursor < self.head:
            self._cut(sub)

    def _cut(self, sub: Subscriber) -> None:
        """The subscriber fell behind: tell it where to resume, then close it."""
        self.stats["resyncs"] += 1
        self._subs.discard(sub)

        async def notify() -> None:
            with contextlib.suppress(Exception):
                await sub.send(resync_message(sub.format, sub.cursor))
            sub.finish("resync")

        self._background(notify())

    def _drop(self, sub: Subscriber, reason: str) -> None:
        self._subs.discard(sub)
        if sub.busy is not None:
            sub.busy.cancel()
        sub.finish(reason)

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- subscribing --------------------------------------------------------------------------------

    async def serve(self, sub: Subscriber) -> None:
        """Replay from the store until the ring covers the cursor, join live, return when finished."""
        try:
            await self._replay(sub)
            sub.group = self._group(sub)
            self._subs.add(sub)
            if sub.cursor < self.head and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._broadcast)
            await sub.done
        finally:
            self._drop(sub, "closed")

    def _group(self, sub: Subscriber) -> int:
        """The number shared by every subscriber of this filter and format. Numbers are never
        reused, so forgetting them all (a server that has seen many filters) only stops sharing
        between subscribers that joined before and after."""
        if len(self._groups) >= MAX_GROUPS:
            self._groups.clear()
        return self._groups.setdefault((sub.filter, sub.format), next(self._numbers))

    async def _replay(self, sub: Subscriber) -> None:
        """The store's events after the cursor, page by page, until the ring holds the rest."""
        flt = sub.filter
        run_id = next(iter(flt.run_ids)) if flt.run_ids is not None and len(flt.run_ids) == 1 else None
        while sub.cursor < self._floor and not sub.done.done():
            floor = self._floor
            events = await self.store.read(sub.cursor, run_id=run_id, kinds=flt.kinds, limit=REPLAY_PAGE)
            frames = [encoded(p) for e in events if (p := flt.project(e)) is not None]
            if frames:
                try:  # a client that stops reading here is as stalled as a live one that stops
                    async with asyncio.timeout(self.stall_timeout_s):
                        await sub.send(events_message(sub.format, frames))
                except TimeoutError:
                    self._stalled(sub)
                    return
            last = events[-1].id if events else sub.cursor
            sub.cursor = last if len(events) == REPLAY_PAGE else max(last, floor)

    async def _beat(self) -> None:
        """SSE heartbeats (one shared message for all), and closing subscribers stalled too long."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            now = loop.time()
            for sub in list(self._subs):
                if sub.busy is None:
                    if sub.format == "sse":
                        self.stats["writes"] += 1
                        self._write(sub, HEARTBEAT)
                elif now - sub.busy_since > self.stall_timeout_s:
                    self._stalled(sub)

    def _stalled(self, sub: Subscriber) -> None:
        self.stats["stalled"] += 1
        self._drop(sub, "stalled: the client stopped reading")
