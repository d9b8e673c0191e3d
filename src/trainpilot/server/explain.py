"""Short LLM explanations of serious findings, when an LLM is configured.

Each warning or critical insight gets one explanation, written by the advisor from the run's
compact summary and stored as an ``insight`` event of kind ``explanation`` that names the insight
it explains. It runs in the background, one at a time per run, at most `MAX_PER_RUN` per run, and
a failing endpoint only costs a logged warning: ingest never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from trainpilot.analysis.llm import AdvisorError
from trainpilot.analysis.summary import run_summary
from trainpilot.events import Event, NewEvent
from trainpilot.server.advisor import AdvisorSource
from trainpilot.store import Store

log = logging.getLogger("trainpilot.server")
MAX_PER_RUN = 10


class Explainer:
    def __init__(self, advisors: AdvisorSource, store: Store) -> None:
        self.advisors = advisors
        self.store = store
        self.busy: set[str] = set()
        self.count: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def schedule(self, insights: list[Event]) -> None:
        for event in insights:
            serious = event.data.get("severity") in ("warning", "critical")
            if not serious or event.run_id in self.busy or self.count.get(event.run_id, 0) >= MAX_PER_RUN:
                continue
            self.busy.add(event.run_id)
            self.count[event.run_id] = self.count.get(event.run_id, 0) + 1
            task = asyncio.create_task(self._explain(event))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def forget(self, run_id: str) -> None:
        """The run ended: its count goes (a run heard from again may get up to `MAX_PER_RUN` more)."""
        self.count.pop(run_id, None)

    async def _explain(self, insight: Event) -> None:
        question = (
            f"Explain this finding in at most three sentences and give the single most useful fix: "
            f"{insight.data.get('kind')} at step {insight.step}: {insight.data.get('message')}"
        )
        try:
            summary = await run_summary(self.store, insight.run_id)
            advisor = await self.advisors.advisor(timeout_s=60)
            text = "".join([chunk async for chunk in advisor.stream(summary, question)]).strip()
            if text:
                data = {
                    "kind": "explanation",
                    "severity": "info",
                    "explains": insight.id,
                    "explains_kind": insight.data.get("kind"),
                    "step": insight.step,
                    "message": text,
                    "source": "llm",
                    "model": advisor.model,
                }
                await self.store.append(
                    [NewEvent(insight.run_id, "insight", data, ts=time.time(), step=insight.step)]
                )
        except (AdvisorError, OSError) as exc:
            log.warning("no explanation for insight %s: %s", insight.id, exc)
        finally:
            self.busy.discard(insight.run_id)
