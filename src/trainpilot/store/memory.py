"""The in-memory store: the Store contract with no durability, for tests and throw-away servers."""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from typing import Any

from trainpilot.downsample import downsample
from trainpilot.events import Event, NewEvent, Point, Run
from trainpilot.exceptions import NotFound
from trainpilot.store import CommitListener, Series, notify
from trainpilot.store.run_state import apply_to_run, run_sort_key


class MemoryStore:
    def __init__(self) -> None:
        self.on_commit: CommitListener | None = None
        self._contact: dict[str, float] = {}
        self._events: list[Event] = []
        self._runs: dict[str, Run] = {}
        self._seqs: dict[str, set[int]] = {}
        self._points: dict[tuple[str, str], list[Point]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_run(
        self, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        if run_id in self._runs:
            return self._runs[run_id], False
        now = time.time()
        run = Run(run_id, project, name, "created", config, now, now)
        self._runs[run_id] = run
        return run, True

    async def get_run(self, run_id: str) -> Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise NotFound(f"no run {run_id!r}") from None

    async def list_runs(
        self, *, project: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Run]:
        runs = [
            r
            for r in self._runs.values()
            if (project is None or r.project == project) and (status is None or r.status == status)
        ]
        return sorted(runs, key=run_sort_key)[:limit]

    async def append(self, events: Sequence[NewEvent]) -> list[Event]:
        for e in events:
            if e.run_id not in self._runs:
                raise NotFound(f"no run {e.run_id!r}")
        stored: list[Event] = []
        next_id = self._events[-1].id + 1 if self._events else 1
        for e in events:
            seqs = self._seqs.setdefault(e.run_id, set())
            if e.seq is not None:
                if e.seq in seqs:
                    continue
                seqs.add(e.seq)
            event = Event(next_id, e.run_id, e.seq, e.kind, e.ts, e.step, e.data)
            next_id += 1
            stored.append(event)
            self._runs[e.run_id] = apply_to_run(self._runs[e.run_id], [event])
            if e.kind == "metrics" and e.step is not None:
                for key, value in e.data.items():
                    if value is not None:
                        series = self._points.setdefault((e.run_id, key), [])
                        point = Point(e.step, value, e.ts, event.id)
                        if series and series[-1].step > e.step:
                            bisect.insort(series, point, key=lambda p: (p.step, p.event_id))
                        else:
                            series.append(point)
        self._events.extend(stored)
        notify(self.on_commit, stored)
        return stored

    async def read(
        self,
        after: int,
        *,
        run_id: str | None = None,
        kinds: frozenset[str] | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        start = bisect.bisect_right(self._events, after, key=lambda e: e.id)
        out: list[Event] = []
        for e in self._events[start:]:
            if (run_id is None or e.run_id == run_id) and (kinds is None or e.kind in kinds):
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    async def current(self, run_id: str) -> dict[str, Point]:
        await self.get_run(run_id)
        latest: dict[str, Point] = {}
        for (rid, key), series in self._points.items():
            if rid == run_id and series:
                latest[key] = max(series, key=lambda p: p.event_id)
        return latest

    async def history(
        self,
        run_id: str,
        keys: Sequence[str],
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int = 1000,
    ) -> list[Series]:
        await self.get_run(run_id)
        out = []
        for key in keys:
            points = [
                p
                for p in self._points.get((run_id, key), [])
                if (start_step is None or p.step >= start_step) and (end_step is None or p.step <= end_step)
            ]
            out.append(Series(key, downsample(points, max_points), len(points)))
        return out

    async def metric_keys(self, run_id: str) -> list[str]:
        await self.get_run(run_id)
        return sorted(key for rid, key in self._points if rid == run_id)

    async def last_id(self) -> int:
        return self._events[-1].id if self._events else 0

    async def health(self) -> dict[str, Any]:
        return {"ok": True, "backend": "memory", "events": len(self._events)}

    async def touch(self, run_id: str, at: float) -> None:
        self._contact[run_id] = max(at, self._contact.get(run_id, at))

    async def last_contact(self) -> dict[str, float]:
        return dict(self._contact)
