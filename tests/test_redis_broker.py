"""The Redis broker against a real redis-server: replicas sharing a store see every event once, in
id order, whichever replica committed it, and keep delivering while Redis is down or restarting.

Each test starts its own `redis-server` on a free port (no disk), so it can be killed at will.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REDIS_SERVER,
    RedisProcess,
    create_run,
    in_process,
    metrics_batch,
    sse_events,
    wait_until,
)
from trainpilot.broker import Filter, Subscriber
from trainpilot.broker.redis import RedisBroker
from trainpilot.events import NewEvent
from trainpilot.server.runner import free_port
from trainpilot.store.memory import MemoryStore

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="LOUD SKIP: redis-server is not installed, the Redis broker is untested here"
)
ID = re.compile(rb"^id: (\d+)$", re.M)


class Collector:
    """A subscriber on one broker, recording the ids it receives."""

    def __init__(self, broker: RedisBroker) -> None:
        self.ids: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            self.ids += [int(x) for x in ID.findall(message.get("body", b""))]

        self.sub = Subscriber(send, "sse", Filter(), broker.head)
        self.task = asyncio.ensure_future(broker.serve(self.sub))


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def replicas(url: str, count: int = 2) -> tuple[MemoryStore, list[RedisBroker]]:
    """`count` brokers sharing one store, as replicas share one database."""
    store = MemoryStore()
    await store.open()
    await store.create_run("r", "p", "n", {})
    brokers = [RedisBroker(url, store) for _ in range(count)]
    for broker in brokers:
        await broker.start(await store.last_id())
    return store, brokers


async def commit(store: MemoryStore, through: RedisBroker, step: int) -> int:
    """Append one event as the replica `through` would: its broker hears of its own commit."""
    store.on_commit = through.publish
    stored = await store.append(
        [NewEvent("r", "metrics", {"loss": 1.0 / (step + 1)}, seq=step, ts=0.0, step=step)]
    )
    store.on_commit = None
    return stored[0].id


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


def test_each_replica_delivers_every_event_in_id_order_whoever_committed_it(redis: RedisProcess) -> None:
    async def body() -> None:
        store, (a, b) = await replicas(redis.url)
        await until(lambda: a.connected and b.connected)
        on_a, on_b = Collector(a), Collector(b)
        expected = [await commit(store, a if step % 3 else b, step) for step in range(300)]
        await until(lambda: len(on_a.ids) >= 300 and len(on_b.ids) >= 300)
        await asyncio.sleep(0.2)  # nothing more may come
        assert on_a.ids == expected and on_b.ids == expected
        assert a.stats["from_replicas"] > 0 and b.stats["from_replicas"] > 0
        for broker in (a, b):
            await broker.close()

    run(body)


def test_with_redis_down_replicas_deliver_from_the_store_and_say_degraded() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def body() -> None:
        store, (a, b) = await replicas(url)
        on_a, on_b = Collector(a), Collector(b)
        expected = [await commit(store, a, step) for step in range(50)]
        await until(lambda: len(on_a.ids) >= 50 and len(on_b.ids) >= 50)  # b: from its store poll
        assert on_a.ids == expected and on_b.ids == expected
        health = b.health()
        assert health["ok"] is False and "error" in health and "store" in health["fallback"]
        for broker in (a, b):
            await broker.close()

    run(body)


def test_a_redis_restart_mid_stream_loses_nothing_and_the_replicas_reconnect(redis: RedisProcess) -> None:
    async def body() -> None:
        store, (a, b) = await replicas(redis.url)
        await until(lambda: a.connected and b.connected)
        on_a, on_b = Collector(a), Collector(b)
        expected = [await commit(store, a if step % 2 else b, step) for step in range(100)]
        redis.stop()
        expected += [await commit(store, a if step % 2 else b, step) for step in range(100, 200)]
        await until(lambda: not a.connected and not b.connected)
        redis.start()
        await until(lambda: a.connected and b.connected)
        expected += [await commit(store, a if step % 2 else b, step) for step in range(200, 300)]
        await until(lambda: len(on_a.ids) >= 300 and len(on_b.ids) >= 300)
        await asyncio.sleep(0.2)
        assert on_a.ids == expected and on_b.ids == expected
        for broker in (a, b):
            await broker.close()

    run(body)


def test_a_server_whose_redis_is_away_says_degraded_and_still_streams(tmp_path: Path) -> None:
    with in_process(tmp_path, store="", broker=f"redis://127.0.0.1:{free_port()}/0") as client:

        def tried() -> bool:  # an attempt to reach Redis failed, as against none made yet
            return client.get("/api/system/health").json()["broker"].get("error") != "not connected yet"

        wait_until(tried, 10, "a failed connection attempt")
        health = client.get("/api/system/health")
        assert health.status_code == 200, "degraded still serves: a load balancer must keep it"
        body = health.json()
        assert body["status"] == "degraded" and body["broker"]["backend"] == "redis"
        assert body["broker"]["ok"] is False and body["broker"]["error"]
        create_run(client, "degraded")
        client.post("/api/runs/degraded/events", json=metrics_batch(0, 5)).raise_for_status()
        events = sse_events(client, {"run_id": "degraded", "kinds": "metrics", "after": "0"}, count=5)
    assert [e.data["step"] for e in events] == list(range(5))


def test_a_server_with_redis_says_ok(tmp_path: Path, redis: RedisProcess) -> None:
    with in_process(tmp_path, store="", broker=redis.url) as client:
        # The broker connects to Redis after startup, not before it: health says so once it has.
        wait_until(lambda: client.get("/api/system/health").json()["status"] == "ok", 10, "a connection")
        body = client.get("/api/system/health").json()
    assert body["status"] == "ok" and body["broker"] == {"ok": True, "backend": "redis"}
