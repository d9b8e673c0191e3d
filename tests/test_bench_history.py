"""Case 5's machinery, small: the fill is all stored, the answer keeps every spike, TensorBoard counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import in_process

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def case(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    import case_history

    return case_history


def test_history_is_filled_completely_and_keeps_every_spike(case: Any, tmp_path: Path) -> None:
    values, spikes = case.loss_curve(3_000)
    with in_process(tmp_path, store="") as client:  # SQLite in the data dir, as the bench case serves
        assert case.fill(client, "history-small", values) == 3_000
        _, size, series = case.history(client, "history-small")
    kept = case.check(series, values, spikes)
    assert size > 0
    assert kept["total"] == 3_000 and kept["returned"] <= case.MAX_POINTS
    assert kept["spikes_kept"] == case.SPIKES == len(spikes)
    assert kept["min_kept"] and kept["max_kept"]


def test_tensorboard_reader_loads_each_prefix_file_whole_or_sampled(case: Any, tmp_path: Path) -> None:
    case.write_event_file(tmp_path, [200, 12_000])
    small, large = tmp_path / "200", tmp_path / "12000"
    assert case.read_tb(small, "full")["points"] == 200
    assert case.read_tb(large, "full")["points"] == 12_000
    sampled = case.read_tb(large, "default")
    assert sampled["points"] == sampled["reservoir"] < 12_000
