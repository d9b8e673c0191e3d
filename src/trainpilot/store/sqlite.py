"""The embedded SQLite store: WAL, one writer thread, group commit, points in chunks.

Writes from every request go through one queue to one writer thread, which drains whatever has
queued and commits it as one transaction (group commit: one fsync-free commit covers many batches
under load, a single batch costs one commit at low rate). One writer makes ids visible in id order.
Readers use their own connections (WAL lets them run beside the writer) on worker threads.

Metric values also go to ``point_chunks`` (chunks.py: one row per metric, 64-step block and
transaction, its points packed) so a history read touches only that metric's blocks, and to
``latest`` so "current metrics" is one indexed read. A downsampled
history answer is kept until its metric gets a new point (``SeriesCache``): a repeated read is free;
one not asked before reads the summaries of 64-step blocks (blocks.py) and the points of the partial
blocks at each bucket's ends and of the metric's open block.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from trainpilot.downsample import bucket_width
from trainpilot.events import Event, NewEvent, Point, Run
from trainpilot.exceptions import NotFound, StoreUnavailable
from trainpilot.store import (
    RUN_COLUMNS,
    CommitListener,
    Series,
    blocks,
    checkpoints,
    chunks,
    notify,
    step_range,
)
from trainpilot.store.run_state import apply_to_run
from trainpilot.store.statements import insert_rows

log = logging.getLogger("trainpilot.store")
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY, project TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    config BLOB NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    last_step INTEGER, last_event_id INTEGER);
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, seq INTEGER, kind TEXT NOT NULL,
    ts REAL NOT NULL, step INTEGER, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_run_seq ON events(run_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_run_id ON events(run_id, id);
CREATE TABLE IF NOT EXISTS metric_keys(
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, name TEXT NOT NULL, UNIQUE(run_id, name));
CREATE TABLE IF NOT EXISTS run_contact(run_id TEXT PRIMARY KEY, heard_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS latest(
    key_id INTEGER PRIMARY KEY, step INTEGER NOT NULL, event_id INTEGER NOT NULL,
    value REAL NOT NULL, ts REAL NOT NULL);
"""
# events_run_id: one run's events in id order (a server rebuilding a run's analysis after a restart,
# a dashboard replaying a run from 0) without reading every other run's; PostgreSQL has it too. A
# database made before it gets it at its next open, in one pass over the events.
# `seq IS NOT NULL` changes no answer (max() skips NULLs) but lets SQLite use the partial index
# events_run_seq; without it a new run's first batch scanned every stored event on the writer
# thread, stalling every run's commits for longer the bigger the database (bench case 3).
MAX_SEQ_SQL = "SELECT max(seq) FROM events WHERE run_id=? AND seq IS NOT NULL"
TOUCH_SQL = (
    "INSERT INTO run_contact VALUES(?, ?) "
    "ON CONFLICT(run_id) DO UPDATE SET heard_at = max(heard_at, excluded.heard_at)"
)

Job = tuple[str, Any, "asyncio.Future[Any]"]


def read_query(
    after: int, run_id: str | None, kinds: frozenset[str] | None, limit: int
) -> tuple[str, list[Any]]:
    """`read`'s SQL and arguments: events after `after` in id order, of one run and some kinds."""
    sql = "SELECT id, run_id, seq, kind, ts, step, data FROM events WHERE id > ?"
    args: list[Any] = [after]
    if run_id is not None:
        sql += " AND run_id = ?"
        args.append(run_id)
    if kinds is not None:
        sql += f" AND kind IN ({','.join('?' * len(kinds))})"
        args.extend(sorted(kinds))
    return sql + " ORDER BY id LIMIT ?", [*args, limit]


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SeriesCache:
    """Downsampled answers kept for repeated history reads (a dashboard reloaded, a second viewer).

    Each is kept with the metric's newest event id, read before the answer was computed: any point
    stored for that metric since changes it, so a stale answer is never served. Bounded by the
    points held, least recently used out first.
    """

    def __init__(self, budget_points: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[int, int, int, int], tuple[int, Series]] = OrderedDict()
        self._held = 0
        self._budget = budget_points
        self._lock = threading.Lock()  # readers run on several worker threads

    def get(self, where: tuple[int, int, int, int], version: int) -> Series | None:
        with self._lock:
            found = self._entries.get(where)
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end(where)
            return Series(found[1].key, list(found[1].points), found[1].total)

    def put(self, where: tuple[int, int, int, int], version: int, series: Series) -> None:
        if len(series.points) > self._budget // 10:
            return
        with self._lock:
            old = self._entries.pop(where, None)
            self._held += len(series.points) - (len(old[1].points) if old else 0)
            self._entries[where] = (version, series)
            while self._held > self._budget:
                self._held -= len(self._entries.popitem(last=False)[1][1].points)


def _run_from_row(row: tuple[Any, ...]) -> Run:
    return Run(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5], row[6], row[7], row[8])


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.on_commit: CommitListener | None = None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._writer: threading.Thread | None = None
        self._checkpoints: checkpoints.Checkpointer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Owned by the writer thread once it runs.
        self._next_id = 1
        self._runs: dict[str, Run] = {}
        self._max_seq: dict[str, int] = {}
        self._key_ids: dict[tuple[str, str], int] = {}
        self._last_error: str | None = None
        self._answers = SeriesCache()
        self._stale = False
        self._summaries = blocks.Summaries()  # each metric's open block, summarised as it is written
        self._pending = chunks.Pending(self._cached_key_id)  # the transaction's points, in chunks

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        conn = _connect(self.path)
        conn.executescript(SCHEMA)
        chunks.create(conn)
        blocks.create(conn)
        self._load_state(conn)
        conn.execute(f"PRAGMA wal_autocheckpoint={checkpoints.WRITER_AUTOCHECKPOINT}")
        self._checkpoints = checkpoints.Checkpointer(lambda: _connect(self.path))
        self._checkpoints.start()
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="trainpilot-sqlite-writer", daemon=True
        )
        self._writer.start()

    def _load_state(self, conn: sqlite3.Connection) -> None:
        """The writer's caches, from the database: at open and after a failed transaction."""
        self._next_id = (conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0) + 1
        self._runs = {r[0]: _run_from_row(r) for r in conn.execute(f"SELECT {RUN_COLUMNS} FROM runs")}
        self._max_seq = {}
        self._key_ids = {}
        self._summaries.reset()
        self._pending.reset()
        self._stale = False

    async def close(self) -> None:
        if self._checkpoints is not None:
            await asyncio.to_thread(self._checkpoints.stop)
            self._checkpoints = None
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None

    # -- writes: one thread, group commit -------------------------------------------------------

    async def _submit(self, op: str, arg: Any) -> Any:
        if self._writer is None:
            raise RuntimeError("SQLiteStore is not open: await store.open() first")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((op, arg, fut))
        return await fut

    async def create_run(
        self, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        result: tuple[Run, bool] = await self._submit("create", (run_id, project, name, config))
        return result

    async def append(self, events: Sequence[NewEvent]) -> list[Event]:
        if not events:
            return []
        stored: list[Event] = await self._submit("append", events)
        return stored

    async def touch(self, run_id: str, at: float) -> None:
        await self._submit("touch", (run_id, at))

    async def last_contact(self) -> dict[str, float]:
        def query() -> dict[str, float]:
            return dict(self._reader().execute("SELECT run_id, heard_at FROM run_contact").fetchall())

        return await asyncio.to_thread(query)

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            job = self._jobs.get()
            jobs: list[Job] = []
            stop = job is None
            if job is not None:
                jobs.append(job)
            while not stop:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    jobs.append(more)
            if jobs:
                self._write(conn, jobs)
            if stop:
                conn.close()
                return

    def _write(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        """One transaction for every queued job; results reach the loop in one callback."""
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        committed: list[Event] = []
        try:
            if self._stale:
                self._load_state(conn)
            conn.execute("BEGIN IMMEDIATE")
            for op, arg, fut in jobs:
                try:
                    if op == "create":
                        results.append((fut, self._create(conn, *arg), None))
                    elif op == "touch":
                        conn.execute(TOUCH_SQL, arg)
                        results.append((fut, None, None))
                    else:
                        stored = self._append(conn, arg)
                        committed.extend(stored)
                        results.append((fut, stored, None))
                except NotFound as exc:
                    results.append((fut, None, exc))
            self._flush_runs(conn, committed)
            self._summaries.write(conn, self._pending)  # the points, then the blocks they left
            conn.execute("COMMIT")
            self._last_error = None
            if self._checkpoints is not None:
                self._checkpoints.committed()
        except Exception as exc:  # the writer thread must survive anything, or every write hangs
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._last_error = f"{type(exc).__name__}: {exc}"
            else:
                log.exception("store: a write failed unexpectedly; its transaction was rolled back")
            error = StoreUnavailable(f"the store could not write: {exc}")
            results = [(fut, None, error) for _, _, fut in jobs]
            committed = []
            self._stale = True
            self._summaries.reset()
            self._pending.reset()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, committed, results)

    def _deliver(
        self, committed: list[Event], results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        notify(self.on_commit, committed)
        for fut, value, exc in results:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    def _create(
        self, conn: sqlite3.Connection, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        if run_id in self._runs:
            return self._runs[run_id], False
        now = time.time()
        run = Run(run_id, project, name, "created", config, now, now)
        conn.execute(
            f"INSERT INTO runs({RUN_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?)",
            (run.id, run.project, run.name, run.status, orjson.dumps(config), now, now, None, None),
        )
        self._runs[run_id] = run
        return run, True

    def _append(self, conn: sqlite3.Connection, events: Sequence[NewEvent]) -> list[Event]:
        for e in events:
            if e.run_id not in self._runs:
                raise NotFound(f"no run {e.run_id!r}")
        fresh = self._drop_duplicates(conn, events)
        stored: list[Event] = []
        event_rows = []
        pending = self._pending
        open_chunks = pending.runs
        next_id = self._next_id
        for e in fresh:
            event = Event(next_id, e.run_id, e.seq, e.kind, e.ts, e.step, e.data)
            stored.append(event)
            event_rows.append((next_id, e.run_id, e.seq, e.kind, e.ts, e.step, orjson.dumps(e.data)))
            if e.kind == "metrics" and e.step is not None:
                step, ts, run_id = e.step, e.ts, e.run_id
                block = step >> chunks.SHIFT
                run_chunks = open_chunks.get(run_id) or {}
                # once per point on the ingest path: one lookup, one extend (summaries are per chunk)
                for key, value in e.data.items():
                    if value is None:
                        continue
                    chunk = run_chunks.get(key)
                    if chunk is None or chunk[0] != block:
                        chunk = pending.start(conn, run_id, key, block)
                        run_chunks = open_chunks[run_id]
                    chunk[2].extend((step, next_id, value, ts))
            next_id += 1
        insert_rows(conn, "INSERT INTO events", 7, event_rows)
        self._next_id = next_id
        return stored

    def _drop_duplicates(self, conn: sqlite3.Connection, events: Sequence[NewEvent]) -> list[NewEvent]:
        """Skip events whose (run, seq) is stored or earlier in the batch; cheap when seqs only grow."""
        by_run: dict[str, list[int]] = {}
        for e in events:
            if e.seq is not None:
                by_run.setdefault(e.run_id, []).append(e.seq)
        seen: dict[str, set[int]] = {}
        for run_id, seqs in by_run.items():
            if run_id not in self._max_seq:
                row = conn.execute(MAX_SEQ_SQL, (run_id,)).fetchone()
                self._max_seq[run_id] = -1 if row[0] is None else row[0]
            known = self._max_seq[run_id]
            # Only seqs at or below the highest stored one can be duplicates: probe just those.
            maybe = sorted({s for s in seqs if s <= known})
            found: set[int] = set()
            for start in range(0, len(maybe), 500):
                chunk = maybe[start : start + 500]
                sql = f"SELECT seq FROM events WHERE run_id=? AND seq IN ({','.join('?' * len(chunk))})"
                found.update(r[0] for r in conn.execute(sql, (run_id, *chunk)))
            seen[run_id] = found
            self._max_seq[run_id] = max(known, max(seqs))
        fresh = []
        for e in events:
            if e.seq is not None:
                run_seen = seen[e.run_id]
                if e.seq in run_seen:
                    continue
                run_seen.add(e.seq)
            fresh.append(e)
        return fresh

    def _cached_key_id(self, conn: sqlite3.Connection, run_id: str, key: str) -> int:
        """A metric's id, known or made (on the writer thread, inside its transaction)."""
        return self._key_ids.get((run_id, key)) or self._key_id(conn, run_id, key)

    def _key_id(self, conn: sqlite3.Connection, run_id: str, key: str) -> int:
        conn.execute("INSERT OR IGNORE INTO metric_keys(run_id, name) VALUES(?,?)", (run_id, key))
        key_id: int = conn.execute(
            "SELECT id FROM metric_keys WHERE run_id=? AND name=?", (run_id, key)
        ).fetchone()[0]
        self._key_ids[(run_id, key)] = key_id
        return key_id

    def _flush_runs(self, conn: sqlite3.Connection, events: list[Event]) -> None:
        by_run: dict[str, list[Event]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(event)
        for run_id, run_events in by_run.items():
            run = apply_to_run(self._runs[run_id], run_events)
            conn.execute(
                "UPDATE runs SET status=?, updated_at=?, last_step=?, last_event_id=? WHERE id=?",
                (run.status, run.updated_at, run.last_step, run.last_event_id, run.id),
            )
            self._runs[run.id] = run

    # -- reads: own connection per worker thread ------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    async def get_run(self, run_id: str) -> Run:
        return await asyncio.to_thread(self._get_run, run_id)

    def _get_run(self, run_id: str) -> Run:
        row = self._reader().execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return _run_from_row(row)

    async def list_runs(
        self, *, project: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Run]:
        def query() -> list[Run]:
            sql = (
                f"SELECT {RUN_COLUMNS} FROM runs "
                "WHERE (?1 IS NULL OR project=?1) AND (?2 IS NULL OR status=?2)"
            )
            rows = self._reader().execute(
                sql + " ORDER BY updated_at DESC, id LIMIT ?3", (project, status, limit)
            )
            return [_run_from_row(r) for r in rows]

        return await asyncio.to_thread(query)

    async def read(
        self,
        after: int,
        *,
        run_id: str | None = None,
        kinds: frozenset[str] | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        def query() -> list[Event]:
            rows = self._reader().execute(*read_query(after, run_id, kinds, limit))
            return [Event(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6])) for r in rows]

        return await asyncio.to_thread(query)

    async def current(self, run_id: str) -> dict[str, Point]:
        def query() -> dict[str, Point]:
            self._get_run(run_id)
            rows = self._reader().execute(
                "SELECT k.name, l.step, l.value, l.ts, l.event_id FROM latest l "
                "JOIN metric_keys k ON k.id = l.key_id WHERE k.run_id = ? ORDER BY k.name",
                (run_id,),
            )
            return {r[0]: Point(r[1], r[2], r[3], r[4]) for r in rows}

        return await asyncio.to_thread(query)

    async def metric_keys(self, run_id: str) -> list[str]:
        def query() -> list[str]:
            self._get_run(run_id)
            rows = self._reader().execute(
                "SELECT name FROM metric_keys WHERE run_id=? ORDER BY name", (run_id,)
            )
            return [r[0] for r in rows]

        return await asyncio.to_thread(query)

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

        def query() -> list[Series]:
            self._get_run(run_id)
            return [self._series(run_id, key, lo, hi, max_points) for key in keys]

        return await asyncio.to_thread(query)

    def _series(self, run_id: str, key: str, lo: int, hi: int, max_points: int) -> Series:
        """One metric's answer, read in one transaction: one snapshot of points, blocks and latest."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return self._read_series(conn, run_id, key, lo, hi, max_points)
        finally:
            conn.execute("COMMIT")

    def _read_series(
        self, conn: sqlite3.Connection, run_id: str, key: str, lo: int, hi: int, max_points: int
    ) -> Series:
        row = conn.execute("SELECT id FROM metric_keys WHERE run_id=? AND name=?", (run_id, key)).fetchone()
        if row is None:
            return Series(key, [], 0)
        key_id = row[0]
        stored = conn.execute("SELECT event_id, step FROM latest WHERE key_id=?", (key_id,)).fetchone()
        version = -1 if stored is None else stored[0]
        if (answer := self._answers.get((key_id, lo, hi, max_points), version)) is not None:
            return answer
        # One point past the budget tells whether to downsample at all, without counting the range.
        head = chunks.first_points(conn, key_id, lo, hi, max_points + 1)
        if len(head) <= max_points:
            return Series(key, head, len(head))
        newest = chunks.last_point(conn, key_id, lo, hi)
        assert newest is not None  # the range holds more than max_points points
        # the latest point's block is summarised only once the metric leaves it: read from its points
        open_block = -1 if stored is None else stored[1] >> chunks.SHIFT
        first = head[0].step
        if max_points < 3:  # no room for a bucket's two extremes plus the latest: the ends, as downsample()
            total = blocks.extremes(conn, key_id, first, newest.step, newest.step - first + 1, open_block)[1]
            ends = [head[0], newest]
            return Series(key, ends if max_points == 2 else ends[1:], total)
        width = bucket_width(first, newest.step, max_points)
        points, total = blocks.extremes(conn, key_id, first, newest.step, width, open_block)
        if points[-1].event_id != newest.event_id:
            points.append(newest)
        self._answers.put((key_id, lo, hi, max_points), version, Series(key, list(points), total))
        return Series(key, points, total)

    async def last_id(self) -> int:
        def query() -> int:
            return int(self._reader().execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])

        return await asyncio.to_thread(query)

    async def health(self) -> dict[str, Any]:
        ok = self._writer is not None and self._writer.is_alive() and self._last_error is None
        return {"ok": ok, "backend": "sqlite", "path": os.path.abspath(self.path), "error": self._last_error}
