"""How stored events change a run's record; shared by every Store backend so they agree."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from trainpilot.events import Event, Run


def apply_to_run(run: Run, events: Iterable[Event]) -> Run:
    """The run after `events` (in id order): status events move the status, every event the clock."""
    status, updated_at, last_step, last_id = run.status, run.updated_at, run.last_step, run.last_event_id
    for event in events:
        if event.kind == "status":
            status = event.data["status"]
        elif event.kind == "metrics" and event.step is not None:
            last_step = event.step if last_step is None else max(last_step, event.step)
        if event.ts > updated_at:
            updated_at = event.ts
        last_id = event.id
    return replace(run, status=status, updated_at=updated_at, last_step=last_step, last_event_id=last_id)


def run_sort_key(run: Run) -> tuple[float, str]:
    """Most recently active first."""
    return (-run.updated_at, run.id)
