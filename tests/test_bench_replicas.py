"""Case 8's machinery, tiny: load split across two replicas on PostgreSQL + Redis is all stored, and
subscribers on both replicas get every event."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def case(monkeypatch: pytest.MonkeyPatch, postgres_schema: str, redis: object) -> ModuleType:
    """Needs what the replicas need (the fixtures skip loudly without PostgreSQL or redis-server)."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])
    )
    return importlib.import_module("case_replicas")


def test_two_replicas_store_every_acknowledged_point_and_deliver_every_event(
    case: ModuleType, tmp_path: Path
) -> None:
    row = case.ingest("postgres-2", str(tmp_path), 0.5)
    assert row["errors"] == [] and row["points_acked"] > 0
    assert row["points_persisted"] == row["points_acked"]
    rows = case.fanout("postgres-2", str(tmp_path), 5)
    assert [r["replica"] for r in rows] == [0, 1]
    assert all(r["lost"] == 0 and r["unhealthy"] == 0 for r in rows)
    assert sum(r["subscribers"] for r in rows) == case.SUBSCRIBERS
