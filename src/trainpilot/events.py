"""The event model: what a run emits, what the store keeps and what subscribers receive.

Everything in trainpilot moves as an `Event` (DESIGN.md, "Event envelope"). The store assigns `id`;
clients assign `seq` (per run, for idempotent re-sends) and `ts` (wall time at `log()`). This module
imports nothing else of ours.

>>> Event(id=7, run_id="r-1", seq=3, kind="metrics", ts=1.0, step=2, data={"loss": 0.5}).kind
'metrics'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Kind = Literal["metrics", "status", "control", "insight", "media", "log"]
KINDS: frozenset[str] = frozenset(get_args(Kind))

# lost: the server heard nothing from the run (no event, no heartbeat) for `run_timeout_s`.
RunStatus = Literal["created", "running", "paused", "stopped", "finished", "failed", "lost"]
RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))
ACTIVE_STATUSES: frozenset[str] = frozenset({"created", "running", "paused"})

Action = Literal["pause", "resume", "stop", "checkpoint", "set_lr"]
ACTIONS: frozenset[str] = frozenset(get_args(Action))


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event on its way in, before the store has given it an id."""

    run_id: str
    kind: Kind
    data: dict[str, Any]
    seq: int | None = None
    ts: float = 0.0
    step: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event. `id` is global and strictly increasing: it is the stream cursor."""

    id: int
    run_id: str
    seq: int | None
    kind: Kind
    ts: float
    step: int | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Run:
    """A run as the store knows it. `status` follows the run's `status` events."""

    id: str
    project: str
    name: str
    status: RunStatus
    config: dict[str, Any]
    created_at: float
    updated_at: float
    last_step: int | None = None
    last_event_id: int | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """One value of one metric."""

    step: int
    value: float
    ts: float
    event_id: int
