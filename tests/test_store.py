"""The Store contract, run against every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from trainpilot.downsample import downsample
from trainpilot.events import Event, NewEvent
from trainpilot.exceptions import NotFound, StoreUnavailable
from trainpilot.server.runner import ServerThread, free_port
from trainpilot.settings import Settings
from trainpilot.store import Store, chunks, open_store
from trainpilot.store.sqlite import MAX_SEQ_SQL, SCHEMA, read_query


def metrics(run_id: str, step: int, seq: int | None, **values: float | None) -> NewEvent:
    return NewEvent(run_id, "metrics", dict(values), seq=seq, ts=1000.0 + step, step=step)


def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of `backend` (PostgreSQL: a schema of its own on the real server)."""
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return "memory://" if backend == "memory" else f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    url = store_url(request.param, request, tmp_path)
    return lambda: open_store(url)


@pytest.fixture(params=["sqlite", "postgres"])
def make_durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    url = store_url(request.param, request, tmp_path)
    return lambda: open_store(url)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def opened(make_store: Callable[[], Store]) -> Store:
    s = make_store()
    await s.open()
    return s


def test_ids_are_global_and_strictly_increasing(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        await s.create_run("b", "p", "b", {})
        first = await s.append([metrics("a", 0, 0, loss=1.0), metrics("b", 0, 0, loss=2.0)])
        second = await s.append([metrics("a", 1, 1, loss=0.5)])
        ids = [e.id for e in first + second]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert await s.last_id() == ids[-1]
        await s.close()

    run(body())


def test_append_is_idempotent_on_run_and_seq(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        batch = [metrics("a", i, i, loss=float(i)) for i in range(5)]
        assert len(await s.append(batch)) == 5
        assert await s.append(batch) == []
        # An overlapping, out-of-order batch stores only what is new, and duplicates within it once.
        mixed = [metrics("a", 7, 7, loss=7.0), metrics("a", 2, 2, loss=2.0), metrics("a", 7, 7, loss=7.0)]
        stored = await s.append(mixed)
        assert [e.seq for e in stored] == [7]
        series = (await s.history("a", ["loss"]))[0]
        assert [p.step for p in series.points] == [0, 1, 2, 3, 4, 7]
        # The same seq in another run is a different event.
        await s.create_run("b", "p", "b", {})
        assert len(await s.append([metrics("b", 0, 0, loss=1.0)])) == 1
        await s.close()

    run(body())


def test_events_without_seq_are_never_deduplicated(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        event = NewEvent("a", "log", {"text": "hello"}, ts=1.0)
        assert len(await s.append([event, event])) == 2
        await s.close()

    run(body())


def test_append_to_unknown_run_is_refused_and_stores_nothing(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        with pytest.raises(NotFound):
            await s.append([metrics("a", 0, 0, loss=1.0), metrics("ghost", 0, 0, loss=1.0)])
        assert await s.read(0) == []
        await s.close()

    run(body())


def test_read_filters_by_run_and_kind_in_id_order(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        for rid in ("a", "b"):
            await s.create_run(rid, "p", rid, {})
        await s.append(
            [
                metrics("a", 0, 0, loss=1.0),
                NewEvent("b", "status", {"status": "running"}, ts=1.0),
                metrics("b", 0, 0, loss=2.0),
                NewEvent("a", "log", {"text": "x"}, ts=2.0),
            ]
        )
        everything = await s.read(0)
        assert [e.id for e in everything] == sorted(e.id for e in everything)
        only_b = await s.read(0, run_id="b")
        assert {e.run_id for e in only_b} == {"b"} and len(only_b) == 2
        only_metrics = await s.read(0, kinds=frozenset({"metrics"}))
        assert [e.run_id for e in only_metrics] == ["a", "b"]
        after_first = await s.read(everything[0].id, limit=2)
        assert [e.id for e in after_first] == [e.id for e in everything[1:3]]
        await s.close()

    run(body())


def test_status_events_move_the_run_and_runs_list_most_recent_first(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        run_a, created = await s.create_run("a", "p", "A", {"lr": 0.1})
        assert created and run_a.status == "created" and run_a.config == {"lr": 0.1}
        again, created = await s.create_run("a", "other", "other", {})
        assert not created and again.project == "p"
        await s.create_run("b", "q", "B", {})
        await s.append([NewEvent("a", "status", {"status": "running"}, ts=5e9), metrics("a", 3, 1, loss=1.0)])
        got = await s.get_run("a")
        assert got.status == "running" and got.last_step == 3
        assert [r.id for r in await s.list_runs()] == ["a", "b"]
        assert [r.id for r in await s.list_runs(project="q")] == ["b"]
        assert [r.id for r in await s.list_runs(status="running")] == ["a"]
        with pytest.raises(NotFound):
            await s.get_run("ghost")
        await s.close()

    run(body())


def test_current_is_the_latest_value_of_every_metric(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        await s.append([metrics("a", 0, 0, loss=2.0, acc=0.1), metrics("a", 1, 1, loss=1.0)])
        await s.append([metrics("a", 2, 2, acc=0.5, bad=None)])
        current = await s.current("a")
        assert {k: (p.value, p.step) for k, p in current.items()} == {"loss": (1.0, 1), "acc": (0.5, 2)}
        assert await s.metric_keys("a") == ["acc", "loss"]
        await s.close()

    run(body())


def test_history_downsamples_keeping_spikes_and_the_latest_point(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        values = [1.0 - i / 20000 for i in range(10_000)]
        values[4321] = 50.0  # a spike
        values[7777] = -50.0  # a dip
        for start in range(0, 10_000, 2500):
            await s.append([metrics("a", i, i, loss=values[i]) for i in range(start, start + 2500)])
        (series,) = await s.history("a", ["loss"], max_points=200)
        assert series.total == 10_000 and series.downsampled
        assert len(series.points) <= 200
        steps = [p.step for p in series.points]
        assert steps == sorted(steps)
        assert 4321 in steps and 7777 in steps
        assert series.points[-1].step == 9999 and series.points[-1].value == values[9999]
        (window,) = await s.history("a", ["loss"], start_step=100, end_step=199, max_points=1000)
        assert [p.step for p in window.points] == list(range(100, 200)) and not window.downsampled
        (missing,) = await s.history("a", ["nope"])
        assert missing.points == [] and missing.total == 0
        await s.close()

    run(body())


def test_history_is_exactly_downsample_of_the_whole_series(make_store: Callable[[], Store]) -> None:
    """Gaps, several points at one step and a late point at an old step: every backend answers
    what `downsample()` makes of the full series, for any budget and step range."""

    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        rng = random.Random(5)
        steps = [i * 3 for i in range(400)] + [i * 3 for i in range(0, 400, 7)] + list(range(5000, 5300))
        rng.shuffle(steps)
        await s.append([metrics("a", step, None, loss=rng.gauss(0, 1)) for step in steps])
        (whole,) = await s.history("a", ["loss"], max_points=100_000)
        assert whole.total == len(steps) and not whole.downsampled
        for start, end in ((None, None), (10, 900), (600, 5200)):
            lo, hi = start or 0, 10**9 if end is None else end
            inside = [p for p in whole.points if lo <= p.step <= hi]
            for budget in (2, 3, 50, 333):
                (series,) = await s.history("a", ["loss"], start_step=start, end_step=end, max_points=budget)
                assert series.points == downsample(inside, budget), (start, end, budget)
                assert series.total == len(inside)
        await s.close()

    run(body())


async def reads_as_downsample(
    s: Store, ranges: tuple[tuple[int | None, int | None], ...], budgets: tuple[int, ...]
) -> None:
    """Run "a"'s loss, for every step range and budget: exactly what downsample() makes of its points."""
    (whole,) = await s.history("a", ["loss"], max_points=100_000)
    for start, end in ranges:
        lo, hi = start or 0, 10**9 if end is None else end
        inside = [p for p in whole.points if lo <= p.step <= hi]
        for budget in budgets:
            (series,) = await s.history("a", ["loss"], start_step=start, end_step=end, max_points=budget)
            assert series.points == downsample(inside, budget), (start, end, budget)
            assert series.total == len(inside)


def test_random_batches_that_revisit_blocks_read_exactly_as_downsample(
    make_store: Callable[[], Store],
) -> None:
    """Many small batches, steps jumping back and forth over a few blocks, few distinct values (ties,
    and -0.0 beside 0.0): each block is written in several chunks and its summary rebuilt from them;
    every answer is still exactly what downsample() makes of every point."""

    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        rng = random.Random(23)
        for _ in range(40):
            start = rng.randrange(0, 600)
            steps = [start + rng.randrange(0, 90) for _ in range(rng.randint(1, 60))]
            await s.append(
                [metrics("a", step, None, loss=rng.choice((-0.0, 0.0, 1.0, 2.0, -3.5))) for step in steps]
            )
        await reads_as_downsample(s, ((None, None), (50, 500), (64, 191), (100, 100)), (2, 3, 11, 64, 250))
        await s.close()

    run(body())


async def long_tied_series(s: Store) -> list[NewEvent]:
    """10,000 steps, each logged twice in separate batches, values from four levels (ties everywhere):
    buckets wider than SQLite's 64-step blocks, blocks written in several transactions."""
    rng = random.Random(11)
    events = [metrics("a", step, None, loss=float(rng.choice((0, 1, 2, 3)))) for step in range(10_000)]
    events += [metrics("a", step, None, loss=float(rng.choice((0, 1, 2, 3)))) for step in range(10_000)]
    for start in range(0, len(events), 1500):
        await s.append(events[start : start + 1500])
    return events


def test_a_long_series_with_ties_reads_exactly_as_downsample(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        await long_tied_series(s)
        ranges = ((None, None), (37, 8123), (64, 127), (63, 64), (5000, 5000))
        await reads_as_downsample(s, ranges, (3, 7, 20, 101, 999))
        await s.close()

    run(body())


ONE_ROW_A_POINT = """CREATE TABLE points(
    key_id INTEGER NOT NULL, step INTEGER NOT NULL, event_id INTEGER NOT NULL,
    value REAL NOT NULL, ts REAL NOT NULL, PRIMARY KEY(key_id, step, event_id)) WITHOUT ROWID"""


@pytest.mark.parametrize("with_blocks", [True, False])
def test_a_database_of_one_row_a_point_has_its_points_moved_into_chunks_at_its_next_open(
    tmp_path: Path, with_blocks: bool
) -> None:
    """The layout before chunks (and, without point_blocks, the one before block summaries, which had a
    points table too): every point kept, each read exactly as before, and the store writes on."""

    async def body() -> None:
        url = f"sqlite:///{tmp_path}/old.db"
        s = open_store(url)
        await s.open()
        await s.create_run("a", "p", "a", {})
        await long_tied_series(s)
        expected = [(await s.history("a", ["loss"], max_points=budget))[0] for budget in (2, 150, 100_000)]
        await s.close()
        with sqlite3.connect(tmp_path / "old.db") as conn:
            conn.execute(ONE_ROW_A_POINT)
            for key_id, block in conn.execute("SELECT DISTINCT key_id, block FROM point_chunks").fetchall():
                rows = conn.execute(
                    "SELECT count, packed FROM point_chunks WHERE key_id=? AND block=? ORDER BY rowid",
                    (key_id, block),
                ).fetchall()
                found = chunks.Block(rows)
                conn.executemany(
                    "INSERT INTO points VALUES(?,?,?,?,?)",
                    [
                        (key_id, *row)
                        for row in zip(found.steps, found.ids, found.values, found.ts, strict=True)
                    ],
                )
            conn.execute("DROP TABLE point_chunks")
            if not with_blocks:
                conn.execute("DROP TABLE point_blocks")
        s = open_store(url)
        await s.open()
        got = [(await s.history("a", ["loss"], max_points=budget))[0] for budget in (2, 150, 100_000)]
        assert got == expected and expected[2].total == 20_000
        await s.append([metrics("a", 10_000, None, loss=-7.0)])
        (after,) = await s.history("a", ["loss"], max_points=150)
        assert after.total == 20_001 and after.points[-1].value == -7.0
        await s.close()
        with sqlite3.connect(tmp_path / "old.db") as conn:
            assert conn.execute("SELECT 1 FROM sqlite_master WHERE name='points'").fetchone() is None

    run(body())


def test_history_after_a_restart_that_resumes_at_an_earlier_step_is_exact(tmp_path: Path) -> None:
    """The block a metric's latest point was in is summarised only once the metric leaves it: a store
    reopened (or killed) while a block was open, then fed from an earlier step, must still answer
    exactly what downsample() makes of every point."""

    async def body() -> None:
        url = f"sqlite:///{tmp_path}/resumed.db"
        rng = random.Random(3)
        s = open_store(url)
        await s.open()
        await s.create_run("a", "p", "a", {})
        await s.append([metrics("a", step, None, loss=rng.random()) for step in range(1000)])
        await s.close()
        s = open_store(url)
        await s.open()
        await s.append([metrics("a", step, None, loss=rng.random()) for step in range(500, 700)])
        (whole,) = await s.history("a", ["loss"], max_points=100_000)
        assert whole.total == 1200
        for budget in (3, 9, 40):
            (series,) = await s.history("a", ["loss"], max_points=budget)
            assert series.points == downsample(whole.points, budget), budget
        await s.close()

    run(body())


def test_history_read_again_sees_points_stored_since(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        await s.append([metrics("a", i, i, loss=1.0) for i in range(1000)])
        for _ in range(2):  # the second read may be answered from a cache
            (before,) = await s.history("a", ["loss"], max_points=100)
        await s.append([metrics("a", 500, 1000, loss=99.0)])  # late, at an old step: a new spike
        (after,) = await s.history("a", ["loss"], max_points=100)
        assert before.total == 1000 and after.total == 1001
        assert 99.0 in [p.value for p in after.points]
        await s.close()

    run(body())


def test_store_survives_reopen_with_ids_and_dedup_intact(make_durable_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_durable_store)
        await s.create_run("a", "p", "a", {})
        first = await s.append([metrics("a", i, i, loss=float(i)) for i in range(3)])
        await s.close()
        s = await opened(make_durable_store)
        assert await s.append([metrics("a", 1, 1, loss=1.0)]) == []
        later = await s.append([metrics("a", 3, 3, loss=3.0)])
        assert later[0].id > first[-1].id
        assert (await s.get_run("a")).last_step == 3
        await s.close()

    run(body())


def test_a_new_runs_highest_seq_is_found_through_the_index_not_a_scan() -> None:
    """Found by bench case 3: without the index, each new run's first batch scanned every stored
    event on the writer thread (20 ms at 500,000 events), stalling every other run's commits."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + MAX_SEQ_SQL, ("a",)))
    assert "USING COVERING INDEX events_run_seq" in plan, plan


def test_one_runs_events_are_read_through_the_index_not_a_scan() -> None:
    """A server rebuilding a run's analysis after a restart reads that run alone, however many
    other runs' events the database holds."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    sql, args = read_query(0, "a", frozenset({"metrics", "insight"}), 500)
    plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    assert "USING INDEX events_run_id (run_id=? AND id>?)" in plan, plan
    conn.close()


def test_on_commit_sees_every_stored_event_once_in_id_order(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        seen: list[Event] = []
        s.on_commit = seen.extend
        await s.create_run("a", "p", "a", {})
        batches = [[metrics("a", i * 10 + j, i * 10 + j, loss=1.0) for j in range(10)] for i in range(20)]
        results = await asyncio.gather(*(s.append(b) for b in batches))
        await s.append(batches[0])  # duplicates: not published again
        stored = [e for r in results for e in r]
        assert len(seen) == 200
        assert [e.id for e in seen] == sorted(e.id for e in stored)
        await s.close()

    run(body())


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
def test_a_publish_that_fails_after_a_commit_still_answers_every_request_of_the_commit(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A real server whose broker raises on every publish: concurrent ingest requests, sharing group
    commits, each get their answer (what was stored is stored), none hangs, and writes go on."""
    settings = Settings(port=free_port(), data_dir=str(tmp_path), store=store_url(backend, request, tmp_path))
    server = ServerThread(settings).start()

    def failing_publish(events: list[Event]) -> None:
        raise RuntimeError("the broker failed (on purpose)")

    try:
        server.hub.store.on_commit = failing_publish
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/api/runs", json={"id": "pub"}).status_code == 201

            def post(writer: int) -> list[int]:
                answers = []
                for batch in range(5):
                    seq = writer * 100 + batch * 10
                    body = {
                        "events": [
                            {"seq": seq + i, "step": seq + i, "data": {"loss": 1.0}} for i in range(10)
                        ]
                    }
                    answer = client.post("/api/runs/pub/events", json=body)
                    answers.append(answer.status_code)
                return answers

            with ThreadPoolExecutor(8) as pool:
                statuses = [code for codes in pool.map(post, range(8)) for code in codes]
            assert statuses == [200] * 40
            history = client.get("/api/metrics/history", params={"run_id": "pub", "keys": "loss"}).json()
            assert history["series"]["loss"]["total"] == 400
            assert client.get("/api/system/health").json()["status"] == "ok"
    finally:
        server.stop()


def test_the_writer_survives_a_write_it_cannot_encode(make_durable_store: Callable[[], Store]) -> None:
    """Found by the fuzzer: a config with an integer beyond 64 bits killed the writer thread, and
    every later write waited forever. Now that write fails alone and the next ones go through."""

    async def body() -> None:
        s = await opened(make_durable_store)
        with pytest.raises(StoreUnavailable):
            await s.create_run("huge", "p", "huge", {"seed": 2**70})
        run_, created = await asyncio.wait_for(s.create_run("fine", "p", "fine", {"seed": 1}), 10)
        assert created and run_.config == {"seed": 1}
        with pytest.raises(StoreUnavailable):
            await s.append([NewEvent("fine", "log", {"n": 2**70}, ts=1.0)])
        assert len(await asyncio.wait_for(s.append([metrics("fine", 0, 0, loss=1.0)]), 10)) == 1
        with pytest.raises(NotFound):
            await s.get_run("huge")
        await s.close()

    run(body())


def test_touch_keeps_each_runs_latest_contact(make_store: Callable[[], Store]) -> None:
    async def body() -> None:
        s = await opened(make_store)
        await s.create_run("a", "p", "a", {})
        await s.create_run("b", "p", "b", {})
        await s.touch("a", 100.0)
        await s.touch("a", 50.0)  # a late, older report does not move it back
        await s.touch("b", 7.0)
        assert await s.last_contact() == {"a": 100.0, "b": 7.0}
        await s.close()

    run(body())


def test_sqlite_rows_of_every_statement_size_are_stored_and_checkpointed_off_the_writer(
    tmp_path: Path,
) -> None:
    """Batches of 1 to 2,500 events (multi-row statements of every power of two, past the largest) keep
    each point; the WAL is checkpointed by the store's checkpoint thread, and a process opening the
    file afterwards reads every row."""
    from trainpilot.store.sqlite import SQLiteStore

    path = str(tmp_path / "t.db")

    async def body() -> None:
        s = SQLiteStore(path)
        await s.open()
        await s.create_run("a", "p", "a", {})
        step = 0
        for size in (1, 2, 3, 7, 64, 1023, 1024, 1025, 2500):
            stored = await s.append(
                [metrics("a", step + i, step + i, x=float(step + i), y=-1.0) for i in range(size)]
            )
            assert len(stored) == size
            step += size
        await asyncio.sleep(0.5)  # two rounds of the checkpoint thread
        assert s._checkpoints is not None and s._checkpoints.stats["checkpoints"] >= 1
        assert s._checkpoints.stats["pages"] > 0
        assert (await s.current("a"))["x"].value == float(step - 1)
        await s.close()

    run(body())
    conn = sqlite3.connect(path)
    stored = chunks.Block(conn.execute("SELECT count, packed FROM point_chunks").fetchall())
    assert (len(stored.steps), len(set(stored.steps)), sum(stored.values)) == (
        2 * 5649,
        5649,
        sum(range(5649)) - 5649.0,
    )
    assert conn.execute("SELECT count(*) FROM events WHERE kind = 'metrics'").fetchone() == (5649,)
    conn.close()
