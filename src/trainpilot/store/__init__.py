"""The Store seam: runs and events, durable, with a global strictly increasing event id.

Backends are picked by URL and imported lazily (STYLE.md): ``sqlite:///path/to/db`` (the embedded
default), ``postgresql://user@host/db`` (several replicas; needs the ``postgres`` extra) and
``memory://`` (tests, throw-away servers). The id a store assigns is the SSE ``id:`` and the WebSocket
cursor, so ids must become visible in id order: one writer per SQLite store; on PostgreSQL a row lock
held to commit (store/postgres.py).

`on_commit` is how live fan-out learns of new events: the store calls it on the event loop, once per
committed batch, in commit (= id) order, before `append` returns to its caller. A listener that
raises is logged, never passed on (`notify`): what committed is stored, so every `append` of that
commit still returns it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trainpilot.events import Event, NewEvent, Point, Run
from trainpilot.exceptions import ConfigError

log = logging.getLogger("trainpilot.store")
CommitListener = Callable[[list[Event]], None]
# The run record's columns, in `Run`'s field order, in every SQL backend.
RUN_COLUMNS = "id, project, name, status, config, created_at, updated_at, last_step, last_event_id"
STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1  # steps are 64-bit integers in every backend


def step_range(start_step: int | None, end_step: int | None) -> tuple[int, int]:
    """A history request's step range, its open ends filled in."""
    return (STEP_MIN if start_step is None else start_step, STEP_MAX if end_step is None else end_step)


def notify(listener: CommitListener | None, committed: list[Event]) -> None:
    """Hand a commit to its listener; a failure there costs live delivery, never a caller's answer."""
    if committed and listener is not None:
        try:
            listener(committed)
        except Exception:
            log.exception("store: on_commit failed for %d committed events", len(committed))


POSTGRES_SCHEMES = ("postgresql", "postgres")
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")
_QUERY_PASSWORD = re.compile(r"(password=)[^&\s]*")


@dataclass(frozen=True, slots=True)
class Series:
    """A metric's points in a step range, possibly downsampled; `total` counts the points in range."""

    key: str
    points: list[Point]
    total: int

    @property
    def downsampled(self) -> bool:
        return len(self.points) < self.total


class Store(Protocol):
    on_commit: CommitListener | None

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_run(
        self, run_id: str, project: str, name: str, config: dict[str, Any]
    ) -> tuple[Run, bool]:
        """Create the run, or return the existing one with this id; the flag says whether it was new."""
        ...

    async def get_run(self, run_id: str) -> Run:
        """The run, or `NotFound`."""
        ...

    async def list_runs(
        self, *, project: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Run]:
        """Runs, most recently active first."""
        ...

    async def append(self, events: Sequence[NewEvent]) -> list[Event]:
        """Store a batch atomically; return only the events that were new (duplicate seqs are skipped)."""
        ...

    async def read(
        self,
        after: int,
        *,
        run_id: str | None = None,
        kinds: frozenset[str] | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events with id > `after` in id order: the replay path of SSE and WebSocket subscribers."""
        ...

    async def current(self, run_id: str) -> dict[str, Point]:
        """The latest value of every metric of the run."""
        ...

    async def history(
        self,
        run_id: str,
        keys: Sequence[str],
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int = 1000,
    ) -> list[Series]:
        """Each key's series, downsampled to at most `max_points` keeping spikes and the latest point."""
        ...

    async def metric_keys(self, run_id: str) -> list[str]: ...

    async def touch(self, run_id: str, at: float) -> None:
        """Record that a server heard from the run at wall time `at` (a batch or a heartbeat), so
        every replica sharing the store can tell a live run from a dead one."""
        ...

    async def last_contact(self) -> dict[str, float]:
        """Each run's latest `touch` time."""
        ...

    async def last_id(self) -> int: ...

    async def health(self) -> dict[str, Any]: ...


def open_store(url: str) -> Store:
    """The store backend for a URL: ``sqlite:///path``, ``postgresql://...``, ``memory://``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from trainpilot.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise ConfigError(
                f"expected sqlite:///relative/file.db or sqlite:////absolute/file.db, got {url!r}"
            )
        return SQLiteStore(path)
    if scheme in POSTGRES_SCHEMES:
        from trainpilot.store.postgres import PostgresStore

        return PostgresStore(url)
    if scheme == "memory":
        from trainpilot.store.memory import MemoryStore

        return MemoryStore()
    raise ConfigError(
        f"unknown store {redact_url(url)!r}: use sqlite:///path/to/file.db, postgresql://user@host/db "
        "or memory://"
    )


def backend_name(url: str) -> str:
    """The backend a store URL opens, as its `health()` names it: ``postgres`` for either scheme."""
    scheme = url.split(":", 1)[0]
    return "postgres" if scheme in POSTGRES_SCHEMES else scheme


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and messages.

    >>> redact_url("postgresql://tp:s3cret@db:5432/tp?sslmode=require")
    'postgresql://tp:***@db:5432/tp?sslmode=require'
    """
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url))
