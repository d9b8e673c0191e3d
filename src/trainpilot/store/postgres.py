"""The PostgreSQL store (psycopg 3, async, pooled): the Store contract for one or several servers.

Ids become visible in id order, across every replica writing to the database: an append transaction
first locks the one row of ``event_ids`` (``SELECT ... FOR UPDATE``) and holds it to commit, so the
next transaction can take ids only after the previous one's are visible. Within a process, appends
go through one writer task that commits everything queued as one transaction (group commit, as the
SQLite store does): under load the lock is taken once per batch of requests, not once per request.
A transaction costs two round trips in pipeline mode (postgres_writes.py); reads run on pooled
connections in autocommit. The schema is versioned (`postgres_migrations`): `open()` refuses a
database that `trainpilot migrate` has not prepared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from trainpilot.downsample import bucket_width
from trainpilot.events import Event, NewEvent, Point, Run
from trainpilot.exceptions import ConfigError, NotFound, StoreUnavailable
from trainpilot.extras import extra
from trainpilot.store import RUN_COLUMNS, CommitListener, Series, notify, redact_url, step_range
from trainpilot.store.postgres_migrations import cannot_reach, check
from trainpilot.store.postgres_writes import Append

with extra("postgres", "the postgres store"):
    import psycopg
    from psycopg import AsyncConnection, IsolationLevel
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.types.json import set_json_loads
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger("trainpilot.store")
CONNECT_TIMEOUT_S = 5
# Each step bucket's lowest and highest point, the first in step order among equals (as downsample()):
# rows (bucket, step, value, ts, event_id). A sparse range is sorted once, by bucket and value; a dense
# one is read per bucket, two top-1 reads of the bucket's index range, with no sort of the series
# (bench/postgres_history.py: at 1M points 1.5 s sorted vs 0.63 s per bucket; 10k, 13 ms vs 87 ms).
DENSE_BUCKET = 125
_POINT = "step, value, ts, event_id"
EXTREMES_SORTED = f"""WITH p AS (SELECT (step - %(first)s) / %(width)s AS b, {_POINT}
    FROM points WHERE key_id = %(k)s AND step BETWEEN %(first)s AND %(last)s)
(SELECT DISTINCT ON (b) b, {_POINT} FROM p ORDER BY b, value, step, event_id) UNION ALL
(SELECT DISTINCT ON (b) b, {_POINT} FROM p ORDER BY b, value DESC, step, event_id)"""
# The last bucket ends at `last`, not at its width: steps near 2**63 must not overflow a bigint.
_BUCKET = """FROM points WHERE key_id = %(k)s AND step BETWEEN %(first)s + g * %(width)s
    AND CASE WHEN g = %(buckets)s - 1 THEN %(last)s ELSE %(first)s + (g + 1) * %(width)s - 1 END"""
EXTREMES_PER_BUCKET = f"""SELECT g, x.* FROM generate_series(0, %(buckets)s - 1) AS g
CROSS JOIN LATERAL (
    (SELECT {_POINT} {_BUCKET} ORDER BY value, step, event_id LIMIT 1) UNION ALL
    (SELECT {_POINT} {_BUCKET} ORDER BY value DESC, step, event_id LIMIT 1)) AS x"""

Job = tuple[Sequence[NewEvent], "asyncio.Future[list[Event]]"]


async def _configure(conn: AsyncConnection[Any]) -> None:
    set_json_loads(orjson.loads, conn)
    # Whatever the server's default: each statement of an append must see the commits before it.
    await conn.set_isolation_level(IsolationLevel.READ_COMMITTED)


class PostgresStore:
    def __init__(self, url: str, *, pool_size: int = 8, wait_s: float = 5.0) -> None:
        """`wait_s`: how long a request waits for a connection before it gets `StoreUnavailable`."""
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"not a PostgreSQL URL {redact_url(url)!r}: {exc}") from None
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        self.url = url
        self.on_commit: CommitListener | None = None
        self._conninfo = make_conninfo("", **params)
        self._pool_size = pool_size
        self._wait_s = wait_s
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._write_error: str | None = None  # the last write's failure, until a write succeeds

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        where = redact_url(self.url)
        try:
            async with await AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                await check(conn, where)
        except psycopg.OperationalError as exc:
            raise cannot_reach(self.url, exc) from None
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=self._wait_s,
            kwargs={"autocommit": True},
            configure=_configure,
            check=AsyncConnectionPool.check_connection,  # a restarted server leaves dead connections
            name="trainpilot-store",
        )
        await pool.open()
        self._pool = pool
        self._writer = asyncio.create_task(self._write_loop(), name="trainpilot-postgres-writer")

    async def close(self) -> None:
        if self._writer is not None:
            self._jobs.put_nowait(None)
            await self._writer
            self._writer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _conn(self, wait_s: float | None = None) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; a database that is away raises `StoreUnavailable`, not a crash."""
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open: await store.open() first")
        try:
            async with self._pool.connection(timeout=wait_s) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL at {redact_url(self.url)} is unavailable: {exc}") from exc

    # -- writes: one writer task, group commit, ids under the event_ids row lock ----------------

    async def create_run(
        self, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        try:
            config_json = orjson.dumps(config).decode()
        except TypeError as exc:
            raise StoreUnavailable(f"the store could not write: {exc}") from None
        now = time.time()
        async with self._conn() as conn:
            cur = await conn.execute(
                f"INSERT INTO runs({RUN_COLUMNS}) "
                "VALUES (%s, %s, %s, 'created', %s::json, %s, %s, NULL, NULL) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {RUN_COLUMNS}",
                (run_id, project, name, config_json, now, now),
            )
            row = await cur.fetchone()
            if row is not None:
                return Run(*row), True
            return await self._get_run(conn, run_id), False

    async def append(self, events: Sequence[NewEvent]) -> list[Event]:
        if not events:
            return []
        if self._writer is None:
            raise RuntimeError("PostgresStore is not open: await store.open() first")
        fut: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((events, fut))
        return await fut

    async def _write_loop(self) -> None:
        while True:
            job = await self._jobs.get()
            jobs = [] if job is None else [job]
            stop = job is None
            while not stop and not self._jobs.empty():
                more = self._jobs.get_nowait()
                if more is None:
                    stop = True
                else:
                    jobs.append(more)
            if jobs:
                await self._write(jobs)
            if stop:
                return

    async def _write(self, jobs: list[Job]) -> None:
        """One transaction for every queued job; `on_commit` hears of it before any caller does."""
        outcomes: list[tuple[asyncio.Future[list[Event]], list[Event] | BaseException]] = []
        encoded: list[tuple[Sequence[NewEvent], list[str], asyncio.Future[list[Event]]]] = []
        for events, fut in jobs:
            try:  # a batch that cannot be encoded fails alone, before the transaction
                encoded.append((events, [orjson.dumps(e.data).decode() for e in events], fut))
            except TypeError as exc:
                outcomes.append((fut, StoreUnavailable(f"the store could not write: {exc}")))
        committed: list[Event] = []
        written: list[tuple[asyncio.Future[list[Event]], list[Event] | BaseException]] = []
        try:
            if encoded:
                # Pipeline mode: BEGIN, the lock and the reads travel together, then writes with COMMIT.
                async with self._conn() as conn, conn.pipeline(), conn.transaction():
                    tx = Append(conn)
                    await tx.begin({e.run_id for events, _, _ in encoded for e in events})
                    for events, data, fut in encoded:
                        try:
                            stored = await tx.add(events, data)
                        except NotFound as exc:
                            written.append((fut, exc))
                        else:
                            committed.extend(stored)
                            written.append((fut, stored))
                    await tx.flush()
                self._write_error = None
        except Exception as exc:  # the writer must survive anything, or every later write hangs
            if not isinstance(exc, StoreUnavailable | psycopg.Error):
                log.exception("store: a write failed unexpectedly; its transaction was rolled back")
            else:
                log.warning("store: a write failed and was rolled back: %s", exc)
            self._write_error = f"{type(exc).__name__}: {exc}"
            error = (
                exc
                if isinstance(exc, StoreUnavailable)
                else StoreUnavailable(f"the store could not write: {exc}")
            )
            written = [(fut, error) for _, _, fut in encoded]
            committed = []
        notify(self.on_commit, committed)
        for fut, outcome in outcomes + written:
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    # -- reads --------------------------------------------------------------------------------------

    async def _get_run(self, conn: AsyncConnection[Any], run_id: str) -> Run:
        cur = await conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = %s", (run_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return Run(*row)

    async def get_run(self, run_id: str) -> Run:
        async with self._conn() as conn:
            return await self._get_run(conn, run_id)

    async def list_runs(
        self, *, project: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Run]:
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs "
                "WHERE (%(p)s::text IS NULL OR project = %(p)s) AND (%(s)s::text IS NULL OR status = %(s)s) "
                "ORDER BY updated_at DESC, id LIMIT %(n)s",
                {"p": project, "s": status, "n": limit},
            )
            return [Run(*r) for r in await cur.fetchall()]

    async def read(
        self,
        after: int,
        *,
        run_id: str | None = None,
        kinds: frozenset[str] | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        sql = "SELECT id, run_id, seq, kind, ts, step, data FROM events WHERE id > %s"
        args: list[Any] = [after]
        if run_id is not None:
            sql += " AND run_id = %s"
            args.append(run_id)
        if kinds is not None:
            sql += " AND kind = ANY(%s)"
            args.append(sorted(kinds))
        async with self._conn() as conn:
            cur = await conn.execute(sql + " ORDER BY id LIMIT %s", (*args, limit))
            return [Event(*r) for r in await cur.fetchall()]

    async def current(self, run_id: str) -> dict[str, Point]:
        async with self._conn() as conn:
            await self._get_run(conn, run_id)
            cur = await conn.execute(
                "SELECT k.name, l.step, l.value, l.ts, l.event_id FROM latest l "
                "JOIN metric_keys k ON k.id = l.key_id WHERE k.run_id = %s ORDER BY k.name",
                (run_id,),
            )
            return {r[0]: Point(r[1], r[2], r[3], r[4]) for r in await cur.fetchall()}

    async def touch(self, run_id: str, at: float) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO run_contact VALUES (%s, %s) ON CONFLICT (run_id) "
                "DO UPDATE SET heard_at = greatest(run_contact.heard_at, excluded.heard_at)",
                (run_id, at),
            )

    async def last_contact(self) -> dict[str, float]:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT run_id, heard_at FROM run_contact")
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def metric_keys(self, run_id: str) -> list[str]:
        async with self._conn() as conn:
            await self._get_run(conn, run_id)
            cur = await conn.execute(
                "SELECT name FROM metric_keys WHERE run_id = %s ORDER BY name", (run_id,)
            )
            return [r[0] for r in await cur.fetchall()]

    async def history(
        self,
        run_id: str,
        keys: Sequence[str],
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int = 1000,
    ) -> list[Series]:
        lo, hi = step_range(start_step, end_step)
        async with self._conn() as conn:
            await self._get_run(conn, run_id)
            return [await _series(conn, run_id, key, lo, hi, max_points) for key in keys]

    async def last_id(self) -> int:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT coalesce(max(id), 0) FROM events")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def health(self) -> dict[str, Any]:
        """Reachable now, and the last write (if any failed since one succeeded) went through."""
        error = self._write_error
        try:
            async with self._conn(wait_s=2.0) as conn:
                await conn.execute("SELECT 1")
        except StoreUnavailable as exc:
            error = str(exc)
        writing = self._writer is not None and not self._writer.done()
        return {
            "ok": writing and error is None,
            "backend": "postgres",
            "url": redact_url(self.url),
            "error": error,
        }


async def _series(
    conn: AsyncConnection[Any], run_id: str, key: str, lo: int, hi: int, max_points: int
) -> Series:
    """One metric's points in [lo, hi]; past `max_points`, each step bucket's min and max plus the newest."""
    cur = await conn.execute("SELECT id FROM metric_keys WHERE run_id = %s AND name = %s", (run_id, key))
    row = await cur.fetchone()
    if row is None:
        return Series(key, [], 0)
    args = {"k": row[0], "lo": lo, "hi": hi}
    where = "FROM points WHERE key_id = %(k)s AND step BETWEEN %(lo)s AND %(hi)s"
    cur = await conn.execute(f"SELECT count(*), min(step), max(step) {where}", args)
    counted = await cur.fetchone()
    assert counted is not None
    total, first, last = counted
    columns = "step, value, ts, event_id"
    if total <= max_points:
        cur = await conn.execute(f"SELECT {columns} {where} ORDER BY step, event_id", args)
        return Series(key, [Point(*r) for r in await cur.fetchall()], total)
    cur = await conn.execute(f"SELECT {columns} {where} ORDER BY step DESC, event_id DESC LIMIT 1", args)
    newest = Point(*(await cur.fetchone() or ()))
    if max_points < 3:  # no room for a bucket's two extremes plus the latest: the ends, as downsample()
        cur = await conn.execute(f"SELECT {columns} {where} ORDER BY step, event_id LIMIT 1", args)
        ends = [Point(*(await cur.fetchone() or ())), newest]
        return Series(key, ends if max_points == 2 else ends[1:], total)
    width = bucket_width(first, last, max_points)
    buckets_n = (last - first) // width + 1
    cur = await conn.execute(
        EXTREMES_PER_BUCKET if total > DENSE_BUCKET * buckets_n else EXTREMES_SORTED,
        {"k": args["k"], "first": first, "last": last, "width": width, "buckets": buckets_n},
    )
    buckets: dict[int, list[Point]] = {}
    for b, step, value, ts, event_id in await cur.fetchall():
        extremes = buckets.setdefault(b, [])
        if not extremes or extremes[0].event_id != event_id:
            extremes.append(Point(step, value, ts, event_id))
    points = [p for b in sorted(buckets) for p in sorted(buckets[b], key=lambda p: (p.step, p.event_id))]
    if points[-1].event_id != newest.event_id:
        points.append(newest)
    return Series(key, points, total)
