"""The detectors against the recorded corpus of real runs, with floors documented in docs/analysis.md."""

from __future__ import annotations

from pathlib import Path

from trainpilot.analysis.evaluate import evaluate

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def test_detectors_find_the_injected_faults_and_leave_healthy_runs_alone() -> None:
    scores, _fired, cases = evaluate(CORPUS)
    faulty = {name: s for name, s in scores.items() if cases[name]["expect"]}
    healthy = [s for name, s in scores.items() if not cases[name]["expect"]]
    assert sum(s.runs for s in scores.values()) == 33
    assert sum(s.detected for s in faulty.values()) >= 25  # of 27 (27 when last evaluated)
    assert sum(s.false_alarms for s in healthy) <= 1  # of 6
    for name in (
        "lr_high",
        "unnormalised",
        "sigmoid_deep",
        "bad_init",
        "tiny_train",
        "label_noise",
        "heavy_decay",
        "slow_loader",
    ):
        assert faulty[name].detected == faulty[name].runs, name
    assert max(faulty["lr_high"].delays) <= 40  # a far too high lr is flagged within a few dozen steps
