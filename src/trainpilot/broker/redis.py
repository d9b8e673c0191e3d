"""Fan-out across server replicas: Redis pub/sub carries each replica's commits to the others.

Every replica keeps its own ring (`MemoryBroker`) and feeds it through one sequencer, in global
id order, from two sources: its own commits and what the other replicas published. An event whose
id is past the ring's head + 1 means something in between was committed elsewhere and has not
arrived yet; since the store makes ids visible in id order (a larger id is visible only once every
smaller one that will ever commit has), the gap is read from the store, so a subscriber never
misses an event and never sees one out of order. Redis pub/sub delivers at most once, so the
sequencer also asks the store every `POLL_S` whether anything newer exists: with Redis down (health
says degraded) live delivery goes on from the store alone, and it recovers by reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import orjson

from trainpilot.broker.memory import MemoryBroker
from trainpilot.broker.subscriber import Subscriber
from trainpilot.events import Event
from trainpilot.extras import extra
from trainpilot.store import Store

with extra("redis", "the redis broker"):
    import redis.asyncio

log = logging.getLogger("trainpilot")
CHANNEL = "trainpilot:events"
POLL_S = 1.0  # how often the store is asked for events no message announced
GAP_PAGE = 1000
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 5.0


def encode_message(origin: bytes, events: list[Event]) -> bytes:
    """A pub/sub message of stored events: `origin` newline JSON, so a replica skips its own batches
    without decoding them. (Not wire.decode_batch's input: these events already have their ids.)"""
    return origin + b"\n" + orjson.dumps(events)


def decode_message(message: bytes, skip: bytes = b"") -> tuple[bytes, list[Event]]:
    """A pub/sub message's origin and events; none decoded when the origin is `skip` (our own)."""
    origin, _, body = message.partition(b"\n")
    return origin, [] if origin == skip else [Event(**raw) for raw in orjson.loads(body)]


class RedisBroker:
    def __init__(self, url: str, store: Store, **ring: Any) -> None:
        self.url = url
        self.store = store
        self.local = MemoryBroker(store, **ring)
        self.origin = os.urandom(8).hex().encode()
        self.connected = False
        self.last_error: str | None = None
        self._inbox: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Any = None  # publishes, with timeouts
        self._listener: Any = None  # subscribes: no read timeout (it waits for messages), pinged instead
        self.stats = self.local.stats
        self.stats.update({"gap_fills": 0, "from_replicas": 0, "redis_errors": 0})

    @property
    def head(self) -> int:
        return self.local.head

    def counts(self) -> dict[str, int]:
        return self.local.counts()

    def health(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ok": self.connected, "backend": "redis"}
        if not self.connected:
            state["error"] = self.last_error or "not connected yet"
            state["fallback"] = f"live events come from the store every {POLL_S:g} s"
        return state

    async def start(self, head_id: int) -> None:
        self._client = redis.asyncio.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)
        self._listener = redis.asyncio.from_url(self.url, socket_connect_timeout=2, health_check_interval=5)
        await self.local.start(head_id)
        for work in (self._sequence(), self._listen(), self._forward()):
            self._tasks.append(asyncio.create_task(work))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.local.close()
        for client in (self._client, self._listener):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def serve(self, sub: Subscriber) -> None:
        await self.local.serve(sub)

    def publish(self, events: list[Event]) -> None:
        """This replica's commits: to the local ring (through the sequencer) and to the others."""
        self._inbox.put_nowait(events)
        if self.connected:  # while Redis is away the others read the store; nothing to encode
            self._outbox.put_nowait(encode_message(self.origin, events))

    # -- the sequencer: everything reaches the ring here, in id order ------------------------------

    async def _sequence(self) -> None:
        while True:
            try:
                batch = await asyncio.wait_for(self._inbox.get(), POLL_S)
            except TimeoutError:
                batch = None
            try:
                await self._deliver(batch)
            except Exception as exc:  # the store away: the next batch or poll tries again
                log.warning("trainpilot: broker could not read the store to fill a gap: %r", exc)

    async def _deliver(self, batch: list[Event] | None) -> None:
        head = self.local.head
        fresh = [e for e in batch if e.id > head] if batch else []
        if batch is None or (fresh and fresh[0].id > head + 1):
            upto = fresh[0].id - 1 if fresh else None
            head = await self._fill(head, upto)
            fresh = [e for e in fresh if e.id > head]
        if fresh:
            self.local.publish(fresh)

    async def _fill(self, head: int, upto: int | None) -> int:
        """Publish what the store holds after `head` (up to `upto`, or all of it on a poll)."""
        while upto is None or head < upto:
            events = await self.store.read(head, limit=GAP_PAGE)
            if upto is not None:
                events = [e for e in events if e.id <= upto]
            if not events:
                break
            self.stats["gap_fills"] += 1
            self.local.publish(events)
            head = events[-1].id
            if upto is None and len(events) < GAP_PAGE:
                break
        return head

    # -- Redis: receive the others' batches, send ours ----------------------------------------------

    async def _listen(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                async with self._listener.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._up()
                    backoff = BACKOFF_MIN_S
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        origin, events = decode_message(message["data"], skip=self.origin)
                        if origin == self.origin:
                            continue
                        self.stats["from_replicas"] += len(events)
                        self._inbox.put_nowait(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _forward(self) -> None:
        """Our commits to Redis, in order; while Redis is away they are dropped (the others poll)."""
        while True:
            payload = await self._outbox.get()
            if not self.connected:
                continue  # queued before Redis went away
            try:
                await self._client.publish(CHANNEL, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)

    def _up(self) -> None:
        if not self.connected:
            log.info("trainpilot: broker connected to %s", self.url)
        self.connected, self.last_error = True, None

    def _down(self, exc: Exception) -> None:
        self.stats["redis_errors"] += 1
        if self.connected:
            log.warning("trainpilot: Redis unreachable (%r); serving live events from the store", exc)
        self.connected, self.last_error = False, repr(exc)
