"""Live analysis: the detectors over each active run's metrics, and the insight events they store.

The Hub hands every stored batch to `LiveAnalysis.observe`, which hands its metrics to the analyst
(analysts.py: the detectors in a child process, so their CPU is not the event loop's) and stores
the insights it answers. A run's analysis is a cache of what the store holds. It is rebuilt by
replaying the run's stored metrics the first time this server (or a new analysis process) sees the
run's metrics: after a restart, or when a run it let go of streams again. So detectors see the
whole curve (a divergence that began before a restart is still found) and one-shot findings are
said once. It is dropped when the run ends or is marked lost, so a server that saw thousands of
runs keeps state for the live ones only.

The replay reads the run's stored insights too: a finding the history implies but the store
lacks (the server died between a batch's commit and its insights') is stored then, and none is
stored twice. Ingest never waits for a replay: what is stored for the run meanwhile waits in
`replaying`, and is analysed in id order once the history is in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from trainpilot.events import Event, NewEvent
from trainpilot.server.analysts import Analyst, AnalystLost, InlineAnalyst, metric_rows
from trainpilot.server.explain import Explainer
from trainpilot.store import Store

log = logging.getLogger("trainpilot.server")
HISTORY = frozenset({"metrics", "insight"})
PAGE = 500  # events per store read, and per request to the analyst replaying them
ANSWER_WAIT_S = 1.0  # the longest a batch's request waits for its insights (they are stored anyway)


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
    analyst: Analyst = field(default_factory=InlineAnalyst)  # the app's lifespan sets the process one
    live: set[str] = field(default_factory=set)  # the runs whose analysis (in the analyst) is up to date
    replaying: dict[str, Replay] = field(default_factory=dict)  # the runs whose history is being read
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        """A run created by this server: there is no history to replay. Its config tells the detectors
        what the metrics cannot (the class count, mixup or label smoothing, the optimiser)."""
        if run_id not in self.replaying and run_id not in self.live:  # a batch came first: it is analysed
            self.analyst.start(run_id, config)
            self.live.add(run_id)

    async def observe(self, run_id: str, stored: list[Event]) -> None:
        """Hand a batch just stored for the run to the detectors and store what they find: the ingest
        path. It waits for their answer at most `ANSWER_WAIT_S` (usually milliseconds: a batch's
        insights are stored by the time its request is answered), and for the analyst to catch up
        when it has `WRITE_AHEAD_BYTES` to read (a bound on memory, not a wait per batch)."""
        if run_id in self.live:
            if rows := metric_rows(stored):
                answer = self.analyst.feed(run_id, rows)
                task = self._spawn(self._store_found(run_id, answer), f"trainpilot-insights-{run_id}")
                await asyncio.wait([task], timeout=ANSWER_WAIT_S)
                await self.analyst.ready()
        elif (replay := self.replaying.get(run_id)) is not None:
            replay.waiting += stored
        elif any(e.kind == "metrics" for e in stored):
            self.replaying[run_id] = Replay(list(stored))
            self._spawn(self._rebuild(run_id), f"trainpilot-replay-{run_id}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _store_found(self, run_id: str, answer: asyncio.Future[list[NewEvent]]) -> None:
        try:
            await self._store(await answer)
        except AnalystLost as exc:  # its next batch replays the run's history into a fresh analysis
            log.warning("analysis: run %s: %s; its next batch rebuilds it from the store", run_id, exc)
            self.forget(run_id)
        except Exception:  # the store away: found but not stored, so the next batch's replay finds it again
            log.exception("analysis: could not store the insights of run %s", run_id)
            self.forget(run_id)

    def forget(self, run_id: str) -> None:
        """The run ended or went silent: let go of its analysis (the store keeps what it found)."""
        if run_id in self.live:
            self.live.discard(run_id)
            self.analyst.forget(run_id)
        if (replay := self.replaying.get(run_id)) is not None:
            replay.ended = True
        if self.explainer is not None:
            self.explainer.forget(run_id)

    async def _rebuild(self, run_id: str) -> None:
        replay = self.replaying[run_id]
        try:
            self.analyst.start(run_id, (await self.store.get_run(run_id)).config)
            await self._store(await self._replay(run_id, replay.waiting[0].id))
            while replay.waiting:
                batch, replay.waiting = replay.waiting, []
                await self._store(await self.analyst.feed(run_id, metric_rows(batch)))
        except Exception as exc:  # the store or the analyst away: the next batch's replay covers what waited
            if isinstance(exc, AnalystLost):
                log.warning("analysis: run %s: %s; its next batch tries again", run_id, exc)
            else:
                log.exception(
                    "analysis: could not rebuild run %s from the store; its next batch tries again", run_id
                )
            del self.replaying[run_id]
            self.analyst.forget(run_id)
            return
        del self.replaying[run_id]  # no await since `waiting` was last found empty: nothing slips by
        if replay.ended:
            self.analyst.forget(run_id)
        else:
            self.live.add(run_id)

    async def _replay(self, run_id: str, before: int) -> list[NewEvent]:
        """Feed the run's fresh analysis its stored metrics with ids below `before`; return the insights
        that history implies and the store does not hold."""
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
            if rows := metric_rows(older):
                found += await self.analyst.feed(run_id, rows)
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
