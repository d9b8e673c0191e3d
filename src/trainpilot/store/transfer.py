"""`trainpilot export` / `import`: move runs between stores (SQLite to PostgreSQL, one host to another).

The file is JSON lines: per run, one ``{"run": {...}}`` line, then one ``{"event": {...}}`` line per
event in id order. Events get new ids in the target store (ids are a store's own cursor); seq, ts,
step and data are kept, so the run's curves, statuses and findings read the same. A run that already
exists in the target is skipped, not merged: importing the same file twice stores nothing twice.
Images are files beside the store (`<data dir>/media`), not events: copy that folder with them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict
from typing import IO, Any

import orjson

from trainpilot.events import NewEvent
from trainpilot.exceptions import InvalidInput, NotFound
from trainpilot.store import Store
from trainpilot.wire import metric_values, optional_int

PAGE = 5000
Progress = Callable[[str], None]


async def export_runs(
    store: Store, out: IO[bytes], run_ids: Iterable[str] = (), progress: Progress = print
) -> int:
    """Write the runs (all of them when `run_ids` is empty) to `out`; return the events written."""
    wanted = list(run_ids)
    runs = [await store.get_run(r) for r in wanted] if wanted else await store.list_runs(limit=2**31 - 1)
    total = 0
    for run in runs:
        out.write(orjson.dumps({"run": asdict(run)}) + b"\n")
        count = 0
        async for page in _pages(store, run.id):
            out.write(b"".join(orjson.dumps({"event": asdict(e)}) + b"\n" for e in page))
            count += len(page)
        progress(f"exported {run.id}: {count:,} events")
        total += count
    return total


async def _pages(store: Store, run_id: str) -> AsyncIterator[list[Any]]:
    after = 0
    while page := await store.read(after, run_id=run_id, limit=PAGE):
        yield page
        after = page[-1].id


async def import_runs(store: Store, lines: Iterable[bytes], progress: Progress = print) -> int:
    """Read an export into `store`; return the events stored. Existing runs are skipped."""
    into = _Importer(store, progress)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            if "run" in record:
                await into.start_run(record["run"])
            else:
                await into.add(record["event"], number)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidInput(f"line {number}", f"not a trainpilot export record: {exc!r}") from None
    await into.end_run()
    return into.total


class _Importer:
    """One run at a time: created (or found and skipped), its events appended a page at a time."""

    def __init__(self, store: Store, progress: Progress) -> None:
        self.store, self.progress = store, progress
        self.run_id: str | None = None
        self.skipping = False
        self.batch: list[NewEvent] = []
        self.count = self.total = 0

    async def start_run(self, run: dict[str, Any]) -> None:
        await self.end_run()
        self.run_id, self.count = run["id"], 0
        try:
            await self.store.get_run(run["id"])
            self.skipping = True
        except NotFound:
            self.skipping = False
            await self.store.create_run(run["id"], run["project"], run["name"], run["config"])

    async def add(self, e: dict[str, Any], number: int) -> None:
        if self.run_id is None or e["run_id"] != self.run_id:
            raise InvalidInput(f"line {number}", f"event of run {e['run_id']!r} outside its run's block")
        if not self.skipping:
            data, step = e["data"], e["step"]
            if e["kind"] == "metrics":  # what the store packs into chunks must be numbers, as ingest's
                data = metric_values(data, f"line {number}.data")
                step = optional_int(step, f"line {number}.step")
            self.batch.append(NewEvent(e["run_id"], e["kind"], data, e["seq"], e["ts"], step))
            if len(self.batch) >= PAGE:
                await self._append()

    async def _append(self) -> None:
        stored = len(await self.store.append(self.batch)) if self.batch else 0
        self.batch = []
        self.count += stored
        self.total += stored

    async def end_run(self) -> None:
        if self.run_id is None:
            return
        if self.skipping:
            self.progress(f"skipped {self.run_id}: the target store already has a run with this id")
        else:
            await self._append()
            self.progress(f"imported {self.run_id}: {self.count:,} events")
        self.run_id = None
