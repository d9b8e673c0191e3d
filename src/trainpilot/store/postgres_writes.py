"""One append transaction on PostgreSQL: lock the id counter, drop duplicates, assign ids, COPY rows.

The PostgreSQL store's writer opens one transaction per group of queued batches and hands each batch
to `Append.add`, which only reads and buffers; `flush` writes everything with a few statements (COPY
for events and points). Everything happens under the ``event_ids`` row lock that `lock` takes, so the
duplicate check, the ids and the run records see exactly what every earlier transaction committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from trainpilot.events import Event, NewEvent, Run
from trainpilot.exceptions import NotFound
from trainpilot.store.rules import apply_to_run

RUN_COLUMNS = "id, project, name, status, config, created_at, updated_at, last_step, last_event_id"
PointRow = tuple[str, str, int, int, float, float]  # run id, metric name, step, event id, value, ts


class Append:
    def __init__(self, conn: AsyncConnection[Any], key_ids: Mapping[tuple[str, str], int]) -> None:
        self.conn = conn
        self.new_key_ids: dict[tuple[str, str], int] = {}  # for the caller's cache, once committed
        self._key_ids = key_ids
        self._last_id = 0
        self._runs: dict[str, Run] = {}
        self._changed: set[str] = set()
        self._stored_max_seq: dict[str, int] = {}  # per run, as committed before this transaction
        self._taken: dict[str, set[int]] = {}  # seqs this transaction stores, per run
        self._events: list[tuple[Any, ...]] = []
        self._points: list[PointRow] = []

    async def lock(self) -> None:
        """Lock the id counter until commit: no other writer, in any process, assigns ids meanwhile."""
        cur = await self.conn.execute("SELECT last_id FROM event_ids FOR UPDATE")
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError("event_ids has no row: the trainpilot schema is damaged")
        self._last_id = row[0]

    async def add(self, events: Sequence[NewEvent], data: Sequence[str]) -> list[Event]:
        """Buffer one batch (`data`: each event's encoded JSON); the new events, or `NotFound` and nothing."""
        await self._load_runs({e.run_id for e in events})
        stored: list[Event] = []
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
            self._runs[e.run_id] = apply_to_run(self._runs[e.run_id], [event])
            self._changed.add(e.run_id)
        return stored

    async def _load_runs(self, run_ids: set[str]) -> None:
        """Each run's record and highest stored seq, once per transaction; `NotFound` for a missing run."""
        missing = sorted(run_ids - self._runs.keys())
        if not missing:
            return
        cur = await self.conn.execute(
            f"SELECT {RUN_COLUMNS}, (SELECT max(seq) FROM events e WHERE e.run_id = runs.id) "
            "FROM runs WHERE id = ANY(%s)",
            (missing,),
        )
        for row in await cur.fetchall():
            self._runs[row[0]] = Run(*row[:9])
            self._stored_max_seq[row[0]] = -1 if row[9] is None else row[9]
        unknown = [r for r in missing if r not in self._runs]
        if unknown:
            raise NotFound(f"no run {unknown[0]!r}")

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
        """Write what was added: events and points by COPY, then latest values, runs and the counter."""
        if not self._events:
            return
        await self._resolve_keys()
        cur = self.conn.cursor()
        async with cur.copy("COPY events(id, run_id, seq, kind, ts, step, data) FROM STDIN") as copy:
            for row in self._events:
                await copy.write_row(row)
        latest: dict[int, tuple[int, int, int, float, float]] = {}
        if self._points:
            async with cur.copy("COPY points(key_id, step, event_id, value, ts) FROM STDIN") as copy:
                for run_id, key, step, event_id, value, ts in self._points:
                    key_id = self.new_key_ids.get((run_id, key)) or self._key_ids[(run_id, key)]
                    await copy.write_row((key_id, step, event_id, value, ts))
                    latest[key_id] = (key_id, step, event_id, value, ts)
            await self.conn.execute(
                "INSERT INTO latest(key_id, step, event_id, value, ts) "
                "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::float8[], %s::float8[]) "
                "ON CONFLICT (key_id) DO UPDATE SET step = excluded.step, event_id = excluded.event_id, "
                "value = excluded.value, ts = excluded.ts",
                [list(column) for column in zip(*latest.values(), strict=True)],
            )
        await cur.executemany(
            "UPDATE runs SET status = %s, updated_at = %s, last_step = %s, last_event_id = %s WHERE id = %s",
            [(r.status, r.updated_at, r.last_step, r.last_event_id, r.id) for r in self._changed_runs()],
        )
        await self.conn.execute("UPDATE event_ids SET last_id = %s", (self._last_id,))

    def _changed_runs(self) -> list[Run]:
        return [self._runs[run_id] for run_id in sorted(self._changed)]

    async def _resolve_keys(self) -> None:
        """Find (or create) the ids of the metrics this transaction writes that are not cached."""
        missing = sorted({(p[0], p[1]) for p in self._points} - self._key_ids.keys())
        if missing:
            columns = ([r for r, _ in missing], [k for _, k in missing])
            await self.conn.execute(
                "INSERT INTO metric_keys(run_id, name) SELECT * FROM unnest(%s::text[], %s::text[]) "
                "ON CONFLICT DO NOTHING",
                columns,
            )
            cur = await self.conn.execute(
                "SELECT run_id, name, m.id FROM metric_keys m "
                "JOIN unnest(%s::text[], %s::text[]) AS b(run_id, name) USING (run_id, name)",
                columns,
            )
            self.new_key_ids = {(r, k): i for r, k, i in await cur.fetchall()}
