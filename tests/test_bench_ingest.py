"""Case 3's machinery, tiny: every point the load acknowledges is found in the server's database."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import orjson
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def case(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])
    )
    return importlib.import_module("case_ingest")


def test_ingest_rows_count_only_points_found_in_the_database(case: ModuleType, tmp_path: Path) -> None:
    served = importlib.import_module("served").served
    with served(str(tmp_path)) as (url, process):
        db = str(tmp_path / "server" / "trainpilot.db")
        rows = [case.measure(url, db, process.pid, t, 2, 10, 0.4, 2) for t in ("rest", "ws")]
    for row in rows:
        assert row["errors"] == []
        assert row["points_acked"] > 0 and row["points_acked"] % (10 * 8) == 0
        assert row["points_persisted"] == row["points_acked"] == row["batches"] * 80
        assert row["points_per_s"] > 0
    assert case.verdicts({"rows": rows})  # a verdict, met or not, computed from the rows


def test_the_mlflow_batches_carry_the_same_points_within_its_request_limit(case: ModuleType) -> None:
    worker = importlib.import_module("ingest_worker")
    ours = [orjson.loads(b) for b in worker.encode_batches(125, 2, 1.0)]
    theirs = [orjson.loads(b) for b in worker.encode_mlflow_batches(125, 2, 1.0)]
    assert [len(b) for b in theirs] == [1000, 1000]  # MLflow's log-batch limit
    for events, metrics in zip(ours, theirs, strict=True):
        flat = [(e["step"], k, v) for e in events for k, v in e["data"].items()]
        assert flat == [(m["step"], m["key"], m["value"]) for m in metrics]


def test_ingest_floors_persist_every_point(case: ModuleType, tmp_path: Path) -> None:
    floors = [
        case.floor_sqlite(str(tmp_path), 10, 4),
        case.floor_store(str(tmp_path), 10, 4, 2),
        case.floor_hub(str(tmp_path), 10, 4, 2),
    ]
    for floor in floors:
        assert floor["points_persisted"] == floor["points_sent"] == 10 * 8 * 4
    assert set(case.stages(10, rounds=1)) == {
        "parse and validate, in C (server/metrics_batch.py)",
        "(any other batch: parse JSON)",
        "(any other batch: validate, wire.decode_batch)",
        "hand the metrics to the analysis process (one JSON line)",
        "live analysis, in that process (Analyzer.observe)",
        "encode for subscribers (once per event, only while one is subscribed)",
    }
