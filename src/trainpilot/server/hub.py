"""The Hub: the one path by which events enter the server, and control commands leave it.

REST ingest, WebSocket ingest, control requests and the embedded SDK transport all call the Hub,
so every event is validated the same way, stored once (the store assigns its id), and then
published by the store's commit listener in id order (DESIGN.md, "One picture"). What it keeps per
run (when it last heard from it, its analysis) lives while the run does: it goes when the run
ends or is marked lost, so a long-lived server's memory follows its live runs, not all it saw.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from trainpilot.broker import Broker
from trainpilot.events import ACTIONS, ACTIVE_STATUSES, Event, NewEvent, Run
from trainpilot.exceptions import Conflict, InvalidInput
from trainpilot.server.advisor import AdvisorSource
from trainpilot.server.alerts import Alerts
from trainpilot.server.insights import LiveAnalysis
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
    analysis: LiveAnalysis = field(init=False)
    alerts: Alerts = field(init=False)  # fed by the store's commit listener where webhooks are configured
    advisors: AdvisorSource = field(init=False)  # which LLM answers questions and explains findings
    ingest_latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # receipt -> durable
    heard: dict[str, float] = field(default_factory=dict)  # run id -> monotonic time of its last batch
    touched: dict[str, float] = field(default_factory=dict)  # run id -> monotonic time of store.touch
    lost: set[str] = field(default_factory=set)  # runs marked lost, revived by their next batch
    since: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.analysis = LiveAnalysis(self.store)
        self.alerts = Alerts(self.settings, self.store)
        self.advisors = AdvisorSource(self.settings)

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
        marked, active = [], set()
        for status in ACTIVE_STATUSES:
            for run in await self.store.list_runs(status=status, limit=100_000):
                active.add(run.id)
                heard_here = now - self.heard.get(run.id, self.since) <= timeout
                if not heard_here and wall - contacts.get(run.id, -math.inf) > timeout:
                    reason = (
                        f"nothing heard from the run for {timeout:g} s: its process died or lost the network"
                    )
                    data = {"status": "lost", "reason": reason}
                    await self.store.append([NewEvent(run.id, "status", data, ts=time.time())])
                    self.lost.add(run.id)
                    self.let_go(run.id)
                    marked.append(run.id)
        # A batch to a run that had ended (a late retry) leaves state that no end will clear.
        for run_id in [r for r, at in self.heard.items() if r not in active and now - at > timeout]:
            self.let_go(run_id)
        return marked

    def let_go(self, run_id: str) -> None:
        """Drop what this server holds about a run; a run heard from again starts over from the store."""
        self.heard.pop(run_id, None)
        self.touched.pop(run_id, None)
        self.analysis.forget(run_id)

    async def create_run(
        self, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        run, created = await self.store.create_run(check_run_id(run_id), project, name, config)
        if created:
            await self.store.append([NewEvent(run.id, "status", {"status": "created"}, ts=run.created_at)])
            self.analysis.start(run.id, run.config)
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
        await self.analysis.observe(run_id, stored)
        if _ends(events):
            self.let_go(run_id)
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


def _ends(events: list[NewEvent]) -> bool:
    """Whether the batch leaves its run ended: its last status event is not an active status."""
    for event in reversed(events):
        if event.kind == "status":
            return event.data.get("status") not in ACTIVE_STATUSES
    return False
