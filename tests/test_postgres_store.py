"""What only the PostgreSQL store promises: commit-ordered ids across replicas, versioned schema,
clear errors when the database is away. The shared contract is in test_store.py."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    POSTGRES_URL,
    LiveServer,
    create_run,
    in_process,
    metrics_batch,
    postgres_admin,
    sse_events,
)
from trainpilot.downsample import downsample
from trainpilot.events import Event, NewEvent
from trainpilot.exceptions import ConfigError, StoreUnavailable
from trainpilot.store import open_store

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from psycopg import AsyncConnection  # noqa: E402

from trainpilot.store.postgres import DENSE_BUCKET, PostgresStore  # noqa: E402
from trainpilot.store.postgres_migrations import current_version, latest_version, migrate  # noqa: E402


def metrics(run_id: str, seq: int) -> NewEvent:
    return NewEvent(run_id, "metrics", {"loss": 1.0 / (seq + 1)}, seq=seq, ts=1000.0 + seq, step=seq)


def test_concurrent_writers_never_let_a_cursor_skip_an_event(postgres_url: str) -> None:
    """Two stores (two pools, as two replicas) append at once while a reader follows the way an SSE
    client resumes: read(after=cursor), cursor = the last id seen. With ids that could commit out of
    order, the reader would move past an id still in flight and never see it."""
    writers_per_store, batches, batch_size = 4, 40, 5

    async def body() -> None:
        replicas = [open_store(postgres_url), open_store(postgres_url)]
        for s in replicas:
            await s.open()
        reader = open_store(postgres_url)
        await reader.open()
        runs = [f"w{r}-{w}" for r in range(len(replicas)) for w in range(writers_per_store)]
        for run_id in runs:
            await replicas[0].create_run(run_id, "p", run_id, {})

        async def write(store_index: int, run_id: str) -> list[Event]:
            stored: list[Event] = []
            for b in range(batches):
                batch = [metrics(run_id, b * batch_size + i) for i in range(batch_size)]
                stored += await replicas[store_index].append(batch)
            return stored

        seen: list[Event] = []
        done = asyncio.Event()

        async def follow() -> None:
            cursor = 0
            while True:
                finished = done.is_set()  # read once more after the writers end: the tail
                page = await reader.read(cursor, limit=50)
                seen.extend(page)
                if page:
                    cursor = page[-1].id
                elif finished:
                    return

        follower = asyncio.create_task(follow())
        written = await asyncio.gather(*(write(int(r[1]), r) for r in runs))
        done.set()
        await follower
        for s in [*replicas, reader]:
            await s.close()
        stored_ids = sorted(e.id for events in written for e in events)
        assert len(stored_ids) == len(runs) * batches * batch_size
        seen_ids = [e.id for e in seen]
        assert seen_ids == sorted(set(seen_ids)), "the reader saw an id twice or out of order"
        missed = sorted(set(stored_ids) - set(seen_ids))
        assert not missed, f"the cursor skipped {len(missed)} committed events, e.g. {missed[:5]}"
        assert seen_ids == stored_ids

    asyncio.run(body())


def test_two_server_processes_writing_at_once_never_let_a_cursor_skip_an_event(
    postgres_url: str, tmp_path: Path
) -> None:
    """The same, with real replicas: two `trainpilot serve` processes take REST batches at once while
    a third client of the database follows with read(after=cursor)."""
    servers = [LiveServer(tmp_path / f"s{i}", store=postgres_url).start() for i in range(2)]
    batches, batch_size = 60, 5
    done = threading.Event()

    def write(server: LiveServer, run_id: str) -> None:
        with server.client() as client:
            create_run(client, run_id)
            for b in range(batches):
                body = metrics_batch(b * batch_size, batch_size)
                assert client.post(f"/api/runs/{run_id}/events", json=body).status_code == 200

    async def follow() -> list[Event]:
        reader = open_store(postgres_url)
        await reader.open()
        seen: list[Event] = []
        while True:
            finished = done.is_set()
            page = await reader.read(seen[-1].id if seen else 0, kinds=frozenset({"metrics"}), limit=50)
            seen += page
            if not page and finished:
                await reader.close()
                return seen
            await asyncio.sleep(0 if page else 0.001)

    writers = [threading.Thread(target=write, args=(s, f"rep{i}")) for i, s in enumerate(servers)]

    def writers_done() -> None:
        for w in writers:
            w.join()
        done.set()

    try:
        for w in writers:
            w.start()
        threading.Thread(target=writers_done).start()
        seen = asyncio.run(follow())
    finally:
        done.set()
        for s in servers:
            s.stop()
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids)), "the reader saw an id twice or out of order"
    written = {(f"rep{i}", seq) for i in range(2) for seq in range(batches * batch_size)}
    missed = written - {(e.run_id, e.seq) for e in seen}
    assert not missed, f"the cursor skipped {len(missed)} committed events"
    assert len(ids) == len(written)


def test_open_refuses_a_database_that_was_never_migrated(postgres_schema: str) -> None:
    async def body() -> None:
        with pytest.raises(ConfigError, match="trainpilot migrate"):
            await open_store(postgres_schema).open()

    asyncio.run(body())


def test_migrate_applies_each_version_once_when_replicas_run_it_at_once(postgres_schema: str) -> None:
    async def body() -> None:
        conns = [await AsyncConnection.connect(postgres_schema, autocommit=True) for _ in range(3)]
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, latest_version()]
        assert await current_version(conns[0]) == latest_version()
        cur = await conns[0].execute("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in await cur.fetchall()] == list(range(1, latest_version() + 1))
        assert await migrate(conns[0]) == []
        for c in conns:
            await c.close()
        store = open_store(postgres_schema)
        await store.open()
        await store.close()

    asyncio.run(body())


def test_open_refuses_a_schema_newer_than_this_code(postgres_url: str) -> None:
    async def body() -> None:
        async with await AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute("INSERT INTO schema_version(version, name) VALUES (9999, 'future')")
        with pytest.raises(ConfigError, match="newer than this trainpilot"):
            await open_store(postgres_url).open()

    asyncio.run(body())


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    async def body() -> None:
        with pytest.raises(StoreUnavailable, match="cannot reach PostgreSQL") as caught:
            await open_store("postgresql://tp:s3cret@127.0.0.1:1/tp").open()
        assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)

    asyncio.run(body())


def test_a_malformed_url_is_a_config_error_naming_the_problem() -> None:
    with pytest.raises(ConfigError, match="invalid URI query parameter"):
        open_store("postgresql://tp:s3cret@127.0.0.1/tp?colour=blue")


@pytest.fixture
def own_database() -> Iterator[tuple[str, str]]:
    """A migrated database of its own (name, URL), so a test can shut its connections out."""
    admin = postgres_admin()
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(POSTGRES_URL, dbname=name)

    async def prepare() -> None:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)

    try:
        asyncio.run(prepare())
        yield name, url
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def test_a_database_that_goes_away_is_store_unavailable_then_writes_resume(
    own_database: tuple[str, str],
) -> None:
    name, url = own_database

    def shut(allow: bool) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
            if not allow:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )

    async def body() -> None:
        store = PostgresStore(url, wait_s=1.0)
        await store.open()
        await store.create_run("a", "p", "a", {})
        before = await store.append([metrics("a", 0)])
        shut(allow=False)
        with pytest.raises(StoreUnavailable):
            await store.append([metrics("a", 1)])
        with pytest.raises(StoreUnavailable):
            await store.read(0)
        health = await store.health()
        assert health["ok"] is False and health["backend"] == "postgres" and health["error"]
        shut(allow=True)
        after: list[Event] = []
        for _ in range(100):  # the pool reconnects in the background, with backoff
            try:
                after = await store.append([metrics("a", 1)])
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
        assert [e.seq for e in after] == [1] and after[0].id > before[0].id
        assert [e.seq for e in await store.read(0)] == [0, 1]
        assert (await store.health())["ok"] is True
        await store.close()

    asyncio.run(body())


def test_a_server_on_postgres_ingests_streams_and_reports_its_store(
    postgres_url: str, tmp_path: Path
) -> None:
    with in_process(tmp_path / "data", store=postgres_url) as client:
        create_run(client, "pg-live")
        assert client.post("/api/runs/pg-live/events", json=metrics_batch(0, 5)).status_code == 200
        assert client.post("/api/runs/pg-live/events", json=metrics_batch(0, 5)).status_code == 200
        health = client.get("/api/system/health").json()
        current = client.get("/api/metrics/current", params={"run_id": "pg-live"}).json()
        events = sse_events(client, {"after": "0", "run_id": "pg-live", "kinds": "metrics"}, count=5)
    assert health["store"]["backend"] == "postgres" and health["store"]["ok"] is True
    assert current["metrics"]["train/loss"]["step"] == 4, current
    assert [e.data["seq"] for e in events] == [0, 1, 2, 3, 4]


def test_a_write_the_database_refuses_fails_alone_and_health_says_so_until_one_succeeds(
    postgres_url: str,
) -> None:
    async def body() -> None:
        store = open_store(postgres_url)
        await store.open()
        await store.create_run("a", "p", "a", {})
        beyond_bigint = NewEvent("a", "metrics", {"loss": 1.0}, seq=0, ts=1.0, step=2**63)
        with pytest.raises(StoreUnavailable, match="out of range"):
            await store.append([beyond_bigint])
        health = await store.health()
        assert health["ok"] is False and "out of range" in health["error"]
        assert [e.seq for e in await store.append([metrics("a", 0)])] == [0]
        assert (await store.health())["ok"] is True
        await store.close()

    asyncio.run(body())


def test_history_reads_dense_and_sparse_ranges_exactly_as_downsample(postgres_url: str) -> None:
    """Dense buckets are read per bucket, sparse ranges sorted at once: both must answer what
    `downsample()` makes of the series, ties in value (the earliest wins), repeated steps and a range
    that ends inside a bucket included."""

    async def body() -> None:
        store = open_store(postgres_url)
        await store.open()
        await store.create_run("a", "p", "a", {})
        rng = random.Random(7)
        steps = list(range(0, 6000, 2)) + list(range(100, 4000, 9))
        rng.shuffle(steps)
        # few distinct values: many ties
        events = [NewEvent("a", "metrics", {"x": float(rng.randint(0, 5))}, ts=1.0, step=s) for s in steps]
        for start in range(0, len(events), 1000):
            await store.append(events[start : start + 1000])
        (whole,) = await store.history("a", ["x"], max_points=100_000)
        for lo, hi in ((0, 10**9), (37, 4321)):
            inside = [p for p in whole.points if lo <= p.step <= hi]
            for budget in (3, 21, 333):
                dense = len(inside) > DENSE_BUCKET * ((budget - 1) // 2)
                (series,) = await store.history("a", ["x"], start_step=lo, end_step=hi, max_points=budget)
                assert series.points == downsample(inside, budget), (lo, hi, budget, dense)
        top = 2**63 - 1  # the last bucket of a range that ends at the largest step a bigint holds
        await store.create_run("b", "p", "b", {})
        tail = [NewEvent("b", "metrics", {"x": float(i % 7)}, ts=1.0, step=top - i) for i in range(600)]
        await store.append([NewEvent("b", "metrics", {"x": 3.0}, ts=1.0, step=0), *tail])
        (everything,) = await store.history("b", ["x"], max_points=100_000)
        (series,) = await store.history("b", ["x"], max_points=5)
        assert series.points == downsample(everything.points, 5)
        await store.close()

    asyncio.run(body())
