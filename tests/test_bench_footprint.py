"""Case 6's machinery, small: the import check sees no torch, the trainer's run is read back whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def case(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    import case_footprint

    return case_footprint


def test_import_time_is_net_of_the_interpreter_and_torch_stays_out(case: Any) -> None:
    result = case.import_time(1)
    assert result["import_ms"] == result["with_import_ms"] - result["bare_ms"]
    assert "torch" not in result["heavy_modules"]
    assert result["top_imports"] and result["top_imports"][0][0].startswith("trainpilot")


def test_server_under_the_trainer_persisted_every_step(case: Any, tmp_path: Path) -> None:
    quiet = case.idle(str(tmp_path / "idle"), 0.2)
    assert quiet["rss_mb"] > 0 and quiet["with_mcp_mb"] > quiet["server_modules_mb"] > quiet["bare_mb"] > 0
    load = case.demo(str(tmp_path / "demo"), 1)
    assert load["status"] == "finished"
    assert load["loss_points"] == load["last_step"] > 0
