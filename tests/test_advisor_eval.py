"""The advisor benchmark's scorer on hand-written answers, its plan over the corpus, and one evaluation
through a scripted advisor (no model: `make advisor-eval` is what asks a real one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from trainpilot.analysis.advisor_eval import (
    Rubric,
    first_fix,
    load_rubric,
    mentions,
    plan,
    rescore,
    run_eval,
    score,
    summary_of,
    table,
)
from trainpilot.analysis.corpus import LabelledRun, load_corpus
from trainpilot.analysis.llm import Advisor

ROOT = Path(__file__).resolve().parent.parent / "corpus"
CORPUS = ROOT / "world"


@pytest.fixture(scope="module")
def rubric() -> Rubric:
    return load_rubric(ROOT / "advisor_rubric.toml")


@pytest.fixture(scope="module")
def runs() -> list[LabelledRun]:
    return load_corpus(CORPUS)


LR_HIGH_RIGHT = """The training loss rises from 2.3 to 8.7 and then becomes NaN: the learning rate is
far too high for SGD.

1. Lower the learning rate to 0.01 (from 10).
2. Add gradient clipping at 1.0."""


def test_every_corpus_fault_has_a_cause_and_a_fix(rubric: Rubric) -> None:
    labels: set[str] = set()
    for manifest in CORPUS.rglob("manifest.json"):
        labels |= {r["label"] for r in json.loads(manifest.read_text())["runs"]}
    faults = labels - {"healthy"}
    assert faults == set(rubric.labels)
    assert all(rubric.labels[f].cause and rubric.labels[f].fix for f in faults)


def test_the_right_cause_and_fix_first_score_both(rubric: Rubric) -> None:
    s = score(LR_HIGH_RIGHT, "lr_high", frozenset({"lr_too_high", "nan_inf"}), rubric)
    assert (s.cause, s.fix_first, s.invented) == (True, True, [])


def test_the_right_fix_named_second_is_not_first(rubric: Rubric) -> None:
    answer = "The learning rate is too high.\n- Add dropout of 0.5.\n- Reduce the learning rate to 1e-3."
    s = score(answer, "lr_high", frozenset({"lr_too_high"}), rubric)
    assert s.cause is True and s.fix_first is False
    assert first_fix(answer, rubric) == {"overfit"}


def test_an_answer_naming_no_fix_has_no_fix_first(rubric: Rubric) -> None:
    s = score("The summary does not contain enough to tell.", "lr_low", frozenset(), rubric)
    assert (s.cause, s.fix_first) == (False, False)


def test_a_negated_fault_is_not_claimed(rubric: Rubric) -> None:
    answer = (
        "The loss falls steadily and there is no sign of overfitting. The model is not underfitting either."
    )
    assert score(answer, "healthy", frozenset(), rubric).invented == []


def test_a_fault_is_claimed_again_after_the_clause_with_the_negation() -> None:
    pattern = load_rubric(ROOT / "advisor_rubric.toml").claims[0].pattern  # overfitting
    assert mentions("The loss is not falling, because the model overfits.", pattern) != []


def test_a_healthy_run_invents_a_fault_no_finding_backs(rubric: Rubric) -> None:
    answer = "The model is overfitting: add dropout."
    assert score(answer, "healthy", frozenset(), rubric).invented == ["overfitting"]
    assert score(answer, "healthy", frozenset({"overfitting"}), rubric).invented == []


def test_a_faulty_run_invents_a_fault_neither_its_label_nor_a_finding_backs(rubric: Rubric) -> None:
    answer = LR_HIGH_RIGHT + "\nThe classes may also be imbalanced."
    s = score(answer, "lr_high", frozenset({"lr_too_high", "nan_inf"}), rubric)
    assert s.invented == ["class_imbalance"]
    # the label itself backs what it is: a forgotten zero_grad needs no finding of its own
    zero = score(
        "You never call optimizer.zero_grad(), so gradients accumulate.", "no_zero_grad", frozenset(), rubric
    )
    assert (zero.cause, zero.fix_first, zero.invented) == (True, True, [])


def test_the_plan_asks_every_fault_and_a_fixed_healthy_sample(
    rubric: Rubric, runs: list[LabelledRun]
) -> None:
    ordered = plan(runs, rubric)
    faulty = [r for r in runs if not r.healthy]
    assert {r.name for r in faulty} <= {r.name for r in ordered}
    assert sum(r.healthy for r in ordered) == min(rubric.healthy_sample, sum(r.healthy for r in runs))
    assert plan(runs, rubric) == ordered
    limited = plan(runs, rubric, limit=10)
    assert limited[0].healthy and len({r.label for r in limited}) == 10


def test_the_summary_is_the_products_and_does_not_name_the_fault(runs: list[LabelledRun]) -> None:
    run = next(r for r in runs if r.label == "lr_high")
    summary, kinds = asyncio.run(summary_of(run, "eval-001"))
    assert summary["run"] == {
        "id": "eval-001",
        "name": "eval-001",
        "project": "advisor-eval",
        "status": "finished",
        "last_step": summary["run"]["last_step"],
    }
    assert kinds & run.expect and {i["kind"] for i in summary["insights"]} <= kinds
    assert "lr_high" not in orjson.dumps(summary).decode()


class ScriptedAdvisor(Advisor):
    """Answers every question with the right advice for a too-high learning rate, in two chunks."""

    async def stream(self, summary: dict[str, Any], question: str) -> AsyncIterator[str]:
        self.messages(summary, question)
        for part in LR_HIGH_RIGHT.partition("\n\n")[::2]:
            yield part


def test_an_evaluation_writes_every_answer_and_its_score(
    rubric: Rubric, runs: list[LabelledRun], tmp_path: Path
) -> None:
    chosen = [next(r for r in runs if r.label == "lr_high"), next(r for r in runs if r.healthy)]
    out = tmp_path / "results.json"
    result = asyncio.run(run_eval(ScriptedAdvisor("http://unused/v1", "scripted"), chosen, rubric, out))
    saved = orjson.loads(out.read_bytes())
    assert saved == orjson.loads(orjson.dumps(result))
    lr, healthy = saved["runs"]
    assert (lr["cause"], lr["fix_first"], lr["invented"], lr["error"]) == (True, True, [], None)
    assert healthy["cause"] is None and "lr_too_high" in healthy["invented"]  # the same advice, unfounded
    assert lr["first_token_s"] is not None
    row = table([saved]).splitlines()[-1]
    assert row.startswith("| scripted | 2 | 100% (1/1) | 100% (1/1) | 0/1 | 1/1 | 0 |")


def test_a_rescore_applies_the_rubric_to_saved_answers(rubric: Rubric, runs: list[LabelledRun]) -> None:
    run = next(r for r in runs if r.label == "lr_high")
    saved = {"runs": [{"run": run.name, "label": run.label, "findings": [], "answer": LR_HIGH_RIGHT}]}
    row = rescore(saved, runs, rubric)["runs"][0]
    assert (row["cause"], row["fix_first"], row["invented"]) == (True, True, [])  # NaN: its expect backs it
