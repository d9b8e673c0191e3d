"""How stored events change a run's record; shared by every Store backend so they agree."""

from __future__ import annotations

from dataclasses import replace

from trainpilot.events import Event, Run


def apply_to_run(run: Run, event: Event) -> Run:
    """The run after `event`: status events move the status, every event moves the clock."""
    status = event.data["status"] if event.kind == "status" else run.status
    last_step = run.last_step
    if event.kind == "metrics" and event.step is not None:
        last_step = event.step if last_step is None else max(last_step, event.step)
    return replace(
        run,
        status=status,
        updated_at=max(run.updated_at, event.ts),
        last_step=last_step,
        last_event_id=event.id,
    )


def run_sort_key(run: Run) -> tuple[float, str]:
    """Most recently active first."""
    return (-run.updated_at, run.id)
