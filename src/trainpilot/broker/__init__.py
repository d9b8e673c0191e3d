"""The Broker seam: live fan-out of stored events to SSE and WebSocket subscribers.

`memory` (the default) is one shared ring of pre-encoded frames with a cursor per subscriber
(DESIGN.md, fan-out); `redis` feeds such a ring from every replica's commits. Backends are
picked by URL and imported lazily, like stores.
"""

from __future__ import annotations

from typing import Any, Protocol

from trainpilot.broker.subscriber import Filter, Subscriber
from trainpilot.events import Event
from trainpilot.exceptions import ConfigError
from trainpilot.store import Store

__all__ = ["Broker", "Filter", "Subscriber", "open_broker"]


class Broker(Protocol):
    @property
    def head(self) -> int:
        """The newest id published; a subscriber with no cursor starts here."""
        ...

    def publish(self, events: list[Event]) -> None:
        """Hand stored events (in id order, on the event loop) to every matching subscriber."""
        ...

    async def start(self, head_id: int) -> None:
        """Begin fan-out; `head_id` is the newest id already stored (older ones replay from the store)."""
        ...

    async def close(self) -> None: ...

    async def serve(self, sub: Subscriber) -> None:
        """Replay what `sub` missed, deliver live events until it is cut off or disconnects."""
        ...

    def counts(self) -> dict[str, int]:
        """Live subscribers by transport (``sse``, ``ws``), for /api/system/info and /metrics."""
        ...

    def health(self) -> dict[str, Any]:
        """``ok`` and ``backend``; a broker that is not ok still serves (degraded), and says how."""
        ...


def open_broker(
    url: str,
    store: Store,
    *,
    ring_size: int = 16384,
    heartbeat_s: float = 15.0,
    stall_timeout_s: float = 30.0,
) -> Broker:
    """The broker for a URL: ``memory://`` (one server) or ``redis://host:port/db`` (replicas).

    Either replays from `store` what a subscriber missed.
    """
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from trainpilot.broker.memory import MemoryBroker

        return MemoryBroker(
            store, ring_size=ring_size, heartbeat_s=heartbeat_s, stall_timeout_s=stall_timeout_s
        )
    if scheme in ("redis", "rediss"):
        from trainpilot.broker.redis import RedisBroker

        return RedisBroker(
            url, store, ring_size=ring_size, heartbeat_s=heartbeat_s, stall_timeout_s=stall_timeout_s
        )
    raise ConfigError(f"unknown broker {url!r}: use memory:// or redis://host:6379/0")
