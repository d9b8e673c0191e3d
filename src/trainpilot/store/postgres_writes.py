"""One append transaction on PostgreSQL: lock the id counter, drop duplicates, assign ids, insert rows.

The PostgreSQL store's writer opens one transaction per group of queued batches (in pipeline mode,
so statements travel together): `begin` locks the ``event_ids`` row and loads the runs involved, in
one round trip; `add` buffers each batch (a round trip only when its seqs may repeat stored ones);
`flush` writes everything as a few multi-row statements sent with the commit. The lock is held to
commit, so the duplicate check, the ids and the run records see all that earlier writers committed.

Each statement reads a snapshot taken when it starts (READ COMMITTED), which is why the lock and the
reads are separate statements: a read in the locking statement would see the world before the wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainpilot.events import Event, NewEvent, Run
from trainpilot.exceptions import NotFound
from trainpilot.extras import extra
from trainpilot.store import RUN_COLUMNS
from trainpilot.store.run_state import apply_to_run

with extra("postgres", "the postgres store"):
    from psycopg import AsyncConnection

INSERT_KEYS = """INSERT INTO metric_keys(run_id, name)
SELECT b.run_id, b.name FROM unnest(%b::text[], %b::text[]) AS b(run_id, name)
WHERE NOT EXISTS (SELECT 1 FROM metric_keys m WHERE m.run_id = b.run_id AND m.name = b.name)"""
INSERT_EVENTS = """INSERT INTO events(id, run_id, seq, kind, ts, step, data)
SELECT id, run_id, seq, kind, ts, step, data::json
FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::float8[], %b::bigint[], %b::text[])
    AS b(id, run_id, seq, kind, ts, step, data)"""
POINTS = """SELECT m.id, b.step, b.event_id, b.value, b.ts
FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::float8[])
    AS b(run_id, name, step, event_id, value, ts)
JOIN metric_keys m ON m.run_id = b.run_id AND m.name = b.name"""
INSERT_POINTS = f"INSERT INTO points(key_id, step, event_id, value, ts) {POINTS}"
UPSERT_LATEST = f"""INSERT INTO latest(key_id, step, event_id, value, ts) {POINTS}
ON CONFLICT (key_id) DO UPDATE SET
    step = excluded.step, event_id = excluded.event_id, value = excluded.value, ts = excluded.ts"""
UPDATE_RUN = "UPDATE runs SET status = %s, updated_at = %s, last_step = %s, last_event_id = %s WHERE id = %s"

PointRow = tuple[str, str, int, int, float, float]  # run id, metric name, step, event id, value, ts


class Append:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self._last_id = 0
        self._runs: dict[str, Run] = {}
        self._changed: set[str] = set()
        self._stored_max_seq: dict[str, int] = {}  # per run, as committed before this transaction
        self._taken: dict[str, set[int]] = {}  # seqs this transaction stores, per run
        self._events: list[tuple[Any, ...]] = []
        self._points: list[PointRow] = []

    async def begin(self, run_ids: set[str]) -> None:
        """Lock the id counter until commit (no other writer, in any process, assigns ids meanwhile),
        then load each run's record and highest stored seq."""
        lock = await self.conn.execute("SELECT last_id FROM event_ids FOR UPDATE")
        runs = await self.conn.execute(
            f"SELECT {RUN_COLUMNS}, (SELECT max(seq) FROM events e WHERE e.run_id = runs.id) "
            "FROM runs WHERE id = ANY(%s)",
            (sorted(run_ids),),
        )
        row = await lock.fetchone()
        if row is None:
            raise RuntimeError("event_ids has no row: the trainpilot schema is damaged")
        self._last_id = row[0]
        for r in await runs.fetchall():
            self._runs[r[0]] = Run(*r[:9])
            self._stored_max_seq[r[0]] = -1 if r[9] is None else r[9]

    async def add(self, events: Sequence[NewEvent], data: Sequence[str]) -> list[Event]:
        """Buffer one batch (`data`: each event's encoded JSON); the new events, or `NotFound` and nothing."""
        unknown = sorted({e.run_id for e in events} - self._runs.keys())
        if unknown:
            raise NotFound(f"no run {unknown[0]!r}")
        stored: list[Event] = []
        by_run: dict[str, list[Event]] = {}
        for i in await self._fresh(events):
            e = events[i]
            self._last_id += 1
            event = Event(self._last_id, e.run_id, e.seq, e.kind, e.ts, e.step, e.data)
            stored.append(event)
            self._events.append((event.id, e.run_id, e.seq, e.kind, e.ts, e.step, data[i]))
            if e.kind == "metrics" and e.step is not None:
                for key, value in e.data.items():
                    if value is not None:
                        self._points.append((e.run_id, key, e.step, event.id, float(value), e.ts))
            by_run.setdefault(e.run_id, []).append(event)
        for run_id, run_events in by_run.items():
            self._runs[run_id] = apply_to_run(self._runs[run_id], run_events)
            self._changed.add(run_id)
        return stored

    async def _fresh(self, events: Sequence[NewEvent]) -> list[int]:
        """Indexes of the events whose (run, seq) is new; only seqs at or below a run's highest are probed."""
        probe = [
            (e.run_id, e.seq) for e in events if e.seq is not None and e.seq <= self._stored_max_seq[e.run_id]
        ]
        stored: set[tuple[str, int]] = set()
        if probe:
            cur = await self.conn.execute(
                "SELECT e.run_id, e.seq FROM events e "
                "JOIN unnest(%s::text[], %s::bigint[]) AS b(run_id, seq) "
                "ON e.run_id = b.run_id AND e.seq = b.seq",
                ([r for r, _ in probe], [s for _, s in probe]),
            )
            stored = {(r, s) for r, s in await cur.fetchall()}
        fresh = []
        for i, e in enumerate(events):
            if e.seq is not None:
                taken = self._taken.setdefault(e.run_id, set())
                if e.seq in taken or (e.run_id, e.seq) in stored:
                    continue
                taken.add(e.seq)
            fresh.append(i)
        return fresh

    async def flush(self) -> None:
        """Queue the writes: metric names, events, points, latest values, runs, the counter."""
        if not self._events:
            return
        conn = self.conn
        if self._points:
            keys = sorted({(p[0], p[1]) for p in self._points})
            await conn.execute(INSERT_KEYS, _columns(keys, 2))
            await conn.execute(INSERT_POINTS, _columns(self._points, 6))
            newest = {(p[0], p[1]): p for p in self._points}  # ids only grow: the last one per metric
            await conn.execute(UPSERT_LATEST, _columns(list(newest.values()), 6))
        await conn.execute(INSERT_EVENTS, _columns(self._events, 7))
        runs = [self._runs[run_id] for run_id in sorted(self._changed)]
        await conn.cursor().executemany(
            UPDATE_RUN, [(r.status, r.updated_at, r.last_step, r.last_event_id, r.id) for r in runs]
        )
        await conn.execute("UPDATE event_ids SET last_id = %s", (self._last_id,))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as column lists, for unnest()."""
    return [[row[i] for row in rows] for i in range(width)]
