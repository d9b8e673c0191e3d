"""Live analysis: the detectors over each active run's metrics, and the insight events they store.

The Hub hands every stored batch to `LiveAnalysis.observe`. A run's `RunAnalysis` is a cache of
what the store holds. It is rebuilt by replaying the run's stored metrics the first time this
server sees the run's metrics: after a restart, or when a run it let go of streams again. So
detectors see the whole curve (a divergence that began before a restart is still found) and
one-shot findings are said once. It is dropped when the run ends or is marked lost, so a server
that saw thousands of runs keeps state for the live ones only.

The replay reads the run's stored insights too: a finding the history implies but the store
lacks (the server died between a batch's commit and its insights') is stored then, and none is
stored twice. Ingest never waits for a replay: what is stored for the run meanwhile waits in
`replaying`, and is analysed in id order once the history is in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trainpilot.analysis import Analyzer, RunAnalysis
from trainpilot.events import Event, NewEvent
from trainpilot.server.explain import Explainer
from trainpilot.store import Store

log = logging.getLogger("trainpilot.server")
HISTORY = frozenset({"metrics", "insight"})
PAGE = 500  # events per store read, and per turn of the event loop spent replaying them


@dataclass
class Replay:
    """A run whose history is being read: what was stored for it since, and whether it has ended."""

    waiting: list[Event]
    ended: bool = False


def said(data: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one stored finding from another: a replay says the very same message."""
    return data.get("kind"), data.get("step"), data.get("message")


@dataclass
class LiveAnalysis:
    store: Store
    explainer: Explainer | None = None
    analyzer: Analyzer = field(default_factory=Analyzer)  # the runs whose analysis is up to date
    replaying: dict[str, Replay] = field(default_factory=dict)  # the runs whose history is being read
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        """A run created by this server: there is no history to replay. Its config tells the detectors
        what the metrics cannot (the class count, mixup or label smoothing, the optimiser)."""
        if run_id not in self.replaying:  # a batch that came first is being analysed already
            self.analyzer.runs.setdefault(run_id, RunAnalysis(self.analyzer.thresholds, config))

    async def observe(self, run_id: str, stored: list[Event]) -> None:
        """Analyse a batch just stored for the run and store what it finds: the ingest path."""
        if run_id in self.analyzer.runs:
            try:
                await self._store(self.analyzer.observe(stored))
            except Exception:
                self.forget(run_id)  # found but not stored: the next batch's replay finds it again
                raise
        elif (replay := self.replaying.get(run_id)) is not None:
            replay.waiting += stored
        elif any(e.kind == "metrics" for e in stored):
            self.replaying[run_id] = Replay(list(stored))
            task = asyncio.create_task(self._rebuild(run_id), name=f"trainpilot-replay-{run_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def forget(self, run_id: str) -> None:
        """The run ended or went silent: let go of its analysis (the store keeps what it found)."""
        self.analyzer.runs.pop(run_id, None)
        if (replay := self.replaying.get(run_id)) is not None:
            replay.ended = True
        if self.explainer is not None:
            self.explainer.forget(run_id)

    async def _rebuild(self, run_id: str) -> None:
        replay = self.replaying[run_id]
        try:
            analysis = RunAnalysis(self.analyzer.thresholds, (await self.store.get_run(run_id)).config)
            await self._store(await self._replay(run_id, analysis, replay.waiting[0].id))
            while replay.waiting:
                batch, replay.waiting = replay.waiting, []
                await self._store([i for e in batch for i in analysis.insights(e)])
        except Exception:  # the store away: what waited is stored, so the next batch's replay covers it
            log.exception(
                "analysis: could not rebuild run %s from the store; its next batch tries again", run_id
            )
            del self.replaying[run_id]
            return
        del self.replaying[run_id]  # no await since `waiting` was last found empty: nothing slips by
        if not replay.ended:
            self.analyzer.runs[run_id] = analysis

    async def _replay(self, run_id: str, analysis: RunAnalysis, before: int) -> list[NewEvent]:
        """Feed `analysis` the run's stored metrics with ids below `before`; return the insights that
        history implies and the store does not hold."""
        found: list[NewEvent] = []
        stored: Counter[tuple[Any, ...]] = Counter()
        after, more = 0, True
        while more:
            page = await self.store.read(after, run_id=run_id, kinds=HISTORY, limit=PAGE)
            older = [e for e in page if e.id < before]
            more = len(older) == PAGE
            for event in older:
                if event.kind == "insight":
                    stored[said(event.data)] += 1
                else:
                    found += analysis.insights(event)
            after = older[-1].id if older else after
        missing = []
        for insight in found:
            if stored[key := said(insight.data)] > 0:
                stored[key] -= 1
            else:
                missing.append(insight)
        return missing

    async def _store(self, found: list[NewEvent]) -> None:
        if found:
            stored = await self.store.append(found)
            if self.explainer is not None:
                self.explainer.schedule(stored)
