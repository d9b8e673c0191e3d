"""Two server replicas sharing PostgreSQL and Redis, as docs/deploy.md runs them: whatever goes in
through one comes out of the other, in id order, exactly once — across resumes, concurrent
writers, a Redis restart and a replica killed mid-stream.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    LiveServer,
    RedisProcess,
    collect_in_background,
    create_run,
    metrics_batch,
    sse_events,
    wait_for_subscribers,
    wait_until,
)
from trainpilot.client.sse import ServerEvent


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_url: str, redis: RedisProcess
) -> Iterator[tuple[LiveServer, LiveServer]]:
    a = LiveServer(tmp_path / "a", store=postgres_url, broker=redis.url).start()
    b = LiveServer(tmp_path / "b", store=postgres_url, broker=redis.url).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def wait_for_subscriber(server: LiveServer) -> None:
    with server.client() as client:
        wait_for_subscribers(client, 1)


def steps(events: list[ServerEvent]) -> list[int]:
    return [int(e.data["step"]) for e in events]  # type: ignore[index]


def ids_increase(events: list[ServerEvent]) -> bool:
    ids = [e.id for e in events]
    return all(x is not None and y is not None and x < y for x, y in itertools.pairwise(ids))


def test_events_ingested_through_one_replica_stream_live_from_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    with a.client() as client:
        create_run(client, "across")
        thread, received = collect_in_background(b.url, {"run_id": "across", "kinds": "metrics"}, count=200)
        wait_for_subscriber(b)
        for start in range(0, 200, 20):
            client.post("/api/runs/across/events", json=metrics_batch(start, 20)).raise_for_status()
    thread.join(30)
    assert steps(received) == list(range(200)) and ids_increase(received)


def test_a_client_resumes_on_the_other_replica_with_last_event_id_exactly_once(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    params = {"run_id": "resume", "kinds": "metrics", "after": "0"}
    with a.client() as client:
        create_run(client, "resume")
        client.post("/api/runs/resume/events", json=metrics_batch(0, 100)).raise_for_status()
    first = sse_events(a.url, params, count=40)
    with b.client() as client:
        client.post("/api/runs/resume/events", json=metrics_batch(100, 100)).raise_for_status()
    rest = sse_events(b.url, params, headers={"Last-Event-ID": str(first[-1].id)}, count=160)
    assert steps(first + rest) == list(range(200)) and ids_increase(first + rest)


def test_concurrent_writers_on_both_replicas_never_make_a_cursor_skip_an_event(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    with a.client() as client:
        for run_id in ("w-a", "w-b"):
            create_run(client, run_id)
    live = [collect_in_background(s.url, {"kinds": "metrics"}, count=600) for s in (a, b)]
    for server in (a, b):
        wait_for_subscriber(server)

    def write(server: LiveServer, run_id: str) -> None:
        with server.client() as client:
            for step in range(300):
                client.post(f"/api/runs/{run_id}/events", json=metrics_batch(step, 1)).raise_for_status()

    writers = [threading.Thread(target=write, args=args) for args in ((a, "w-a"), (b, "w-b"))]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    replay = sse_events(b.url, {"kinds": "metrics", "after": "0"}, count=600)
    everything = [(e.data["run_id"], e.data["step"]) for e in replay]  # type: ignore[index]
    assert sorted(everything) == sorted((r, s) for r in ("w-a", "w-b") for s in range(300))
    for thread, received in live:
        thread.join(30)
        # a live follower on either replica saw exactly the stored sequence: no skip, no duplicate
        assert [e.id for e in received] == [e.id for e in replay]


def test_a_redis_restart_mid_stream_loses_nothing_for_a_follower_on_the_other_replica(
    replicas: tuple[LiveServer, LiveServer], redis: RedisProcess
) -> None:
    a, b = replicas
    with a.client() as client:
        create_run(client, "restart")
        thread, received = collect_in_background(b.url, {"run_id": "restart", "kinds": "metrics"}, count=150)
        wait_for_subscriber(b)
        client.post("/api/runs/restart/events", json=metrics_batch(0, 50)).raise_for_status()
        redis.stop()
        client.post("/api/runs/restart/events", json=metrics_batch(50, 50)).raise_for_status()
        redis.start()
        client.post("/api/runs/restart/events", json=metrics_batch(100, 50)).raise_for_status()
    thread.join(30)
    assert steps(received) == list(range(150)) and ids_increase(received)


def test_when_a_replica_is_killed_its_clients_resume_on_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    params = {"run_id": "killed", "kinds": "metrics", "after": "0"}
    with a.client() as client:
        create_run(client, "killed")
        client.post("/api/runs/killed/events", json=metrics_batch(0, 60)).raise_for_status()
    seen = sse_events(a.url, params, count=60)
    a.stop(kill=True)
    with b.client() as client:  # the training process's next batches reach the survivor
        client.post("/api/runs/killed/events", json=metrics_batch(60, 40)).raise_for_status()
    rest = sse_events(b.url, params, headers={"Last-Event-ID": str(seen[-1].id)}, count=40)
    assert steps(seen + rest) == list(range(100)) and ids_increase(seen + rest)


def test_a_run_heard_only_by_one_replica_is_not_marked_lost_by_the_other(
    tmp_path: Path, postgres_url: str, redis: RedisProcess
) -> None:
    timeout = {"store": postgres_url, "broker": redis.url, "run_timeout_s": "1.5"}
    a = LiveServer(tmp_path / "a", **timeout).start()
    b = LiveServer(tmp_path / "b", **timeout).start()

    def status() -> str:
        value: str = httpx.get(f"{b.url}/api/runs/quiet", timeout=5).json()["status"]
        return value

    try:
        with a.client() as client:
            create_run(client, "quiet")
            client.post("/api/runs/quiet/events", json=metrics_batch(0, 5)).raise_for_status()
            for _ in range(20):  # 4 s of heartbeats to A only: more than twice the timeout
                client.post("/api/runs/quiet/events", json={"events": []}).raise_for_status()
                assert status() != "lost"
                time.sleep(0.2)
            wait_until(lambda: status() == "lost", timeout=10, what="the silent run to be marked lost")

            def revived() -> bool:  # A learns of B's verdict at its next liveness round
                client.post("/api/runs/quiet/events", json={"events": []}).raise_for_status()
                return status() == "running"

            wait_until(revived, timeout=10, what="a heartbeat to A to revive the run")
    finally:
        a.stop()
        b.stop()
