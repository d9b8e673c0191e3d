"""The Hub: the one path by which events enter the server, and control commands leave it.

REST ingest, WebSocket ingest, control requests and the embedded SDK transport all call the Hub,
so every event is validated the same way, stored once (the store assigns its id), and then
published by the store's commit listener in id order (DESIGN.md, "One picture").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from trainpilot.analysis import Analyzer
from trainpilot.broker import Broker
from trainpilot.events import ACTIONS, ACTIVE_STATUSES, Event, NewEvent, Run
from trainpilot.exceptions import Conflict, InvalidInput
from trainpilot.server.explain import Explainer
from trainpilot.server.latency import LatencyHistogram
from trainpilot.settings import Settings
from trainpilot.store import Store
from trainpilot.wire import check_run_id


@dataclass(frozen=True, slots=True)
class IngestResult:
    stored: int
    duplicates: int
    last_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "duplicates": self.duplicates, "last_id": self.last_id}


@dataclass
class Hub:
    settings: Settings
    store: Store
    broker: Broker
    started_at: float = field(default_factory=time.time)
    counters: dict[str, int] = field(
        default_factory=lambda: {"events_ingested": 0, "duplicates": 0, "batches": 0, "control_requests": 0}
    )
    analyzer: Analyzer = field(default_factory=Analyzer)
    ingest_latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # receipt -> durable
    explainer: Explainer | None = None
    heard: dict[str, float] = field(default_factory=dict)  # run id -> monotonic time of its last batch
    touched: dict[str, float] = field(default_factory=dict)  # run id -> monotonic time of store.touch
    lost: set[str] = field(default_factory=set)  # runs marked lost, revived by their next batch
    since: float = field(default_factory=time.monotonic)

    async def load_lost(self) -> None:
        self.lost = {run.id for run in await self.store.list_runs(status="lost", limit=100_000)}

    async def mark_lost(self) -> list[str]:
        """Mark live runs that sent nothing, not even a heartbeat, for `run_timeout_s` as lost.

        A run left live by an earlier server life gets the full timeout from this server's start,
        time for its process to reconnect and replay its spool. A run heard by another replica
        sharing the store (its `touch` is recent) is alive too.
        """
        await self.load_lost()  # another replica may have marked one: its next batch here revives it
        contacts = await self.store.last_contact()
        now, wall, timeout = time.monotonic(), time.time(), self.settings.run_timeout_s
        marked = []
        for status in ("created", "running", "paused"):
            for run in await self.store.list_runs(status=status, limit=100_000):
                heard_here = now - self.heard.get(run.id, self.since) <= timeout
                if not heard_here and wall - contacts.get(run.id, -math.inf) > timeout:
                    reason = (
                        f"nothing heard from the run for {timeout:g} s: its process died or lost the network"
                    )
                    data = {"status": "lost", "reason": reason}
                    await self.store.append([NewEvent(run.id, "status", data, ts=time.time())])
                    self.lost.add(run.id)
                    marked.append(run.id)
        return marked

    async def create_run(
        self, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        run, created = await self.store.create_run(check_run_id(run_id), project, name, config)
        if created:
            await self.store.append([NewEvent(run.id, "status", {"status": "created"}, ts=run.created_at)])
            run = await self.store.get_run(run.id)
        return run, created

    async def ingest(
        self, run_id: str, events: list[NewEvent], received: float | None = None
    ) -> IngestResult:
        """Store a validated batch once and publish what was new; report non-finite values as insights.

        `received` (perf_counter) is when the batch arrived, where the caller knows it: the time from
        there to the commit goes to `ingest_latency`.
        """
        received = time.perf_counter() if received is None else received
        if not events:
            await self.store.get_run(
                run_id
            )  # an empty batch (a heartbeat) still answers 404 for an unknown run
        now = self.heard[run_id] = time.monotonic()
        if now - self.touched.get(run_id, -math.inf) >= self.settings.run_timeout_s / 6:
            self.touched[run_id] = now  # other replicas read it: they may never see this run's batches
            await self.store.touch(run_id, time.time())
        if run_id in self.lost:
            self.lost.discard(run_id)
            if not any(e.kind == "status" for e in events):
                revived = {"status": "running", "reason": "heard from again"}
                events = [NewEvent(run_id, "status", revived, ts=time.time()), *events]
        stored = await self.store.append(events)
        self.ingest_latency.observe(time.perf_counter() - received)
        self.counters["batches"] += 1
        self.counters["events_ingested"] += len(stored)
        self.counters["duplicates"] += len(events) - len(stored)
        insights = self.analyzer.observe(stored)
        if insights:
            found = await self.store.append(insights)
            if self.explainer is not None:
                self.explainer.schedule(found)
        return IngestResult(len(stored), len(events) - len(stored), stored[-1].id if stored else None)

    async def request_control(self, run_id: str, action: str, value: Any, requested_by: str) -> Event:
        """Store a control command for the run; its event id is the command id."""
        if action not in ACTIONS:
            raise InvalidInput("action", f"must be one of {sorted(ACTIONS)}, got {action!r}")
        data: dict[str, Any] = {"action": action, "status": "requested", "requested_by": requested_by}
        if action == "set_lr":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise InvalidInput("value", "set_lr needs a positive, finite learning rate")
            data["value"] = float(value)
        elif value is not None:
            raise InvalidInput("value", f"{action} takes no value")
        run = await self.store.get_run(run_id)
        if run.status not in ACTIVE_STATUSES:
            raise Conflict(
                f"run {run_id!r} is {run.status}: only a created, running or paused run takes commands"
            )
        self.counters["control_requests"] += 1
        (event,) = await self.store.append([NewEvent(run_id, "control", data, ts=time.time())])
        return event

    async def default_run(self) -> Run | None:
        """The most recently active run that is still active, else the most recent run."""
        runs = await self.store.list_runs(limit=50)
        for run in runs:
            if run.status in ACTIVE_STATUSES:
                return run
        return runs[0] if runs else None
