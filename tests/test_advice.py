"""What the advisor tells a model (advice.py) and how an answer is checked, on summaries written by hand."""

from __future__ import annotations

from typing import Any

from trainpilot.analysis import advice


def summary(*findings: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": {"name": "cnn", "status": "running", "last_step": 300},
        "config": {"lr": 2.0, "optimizer": "sgd"},
        "metrics": {
            "train/loss": {
                "early": {"mean": 2.3},
                "middle": {"mean": 5.1},
                "late": {"mean": 8.7},
                "last": 8.7,
                "last_step": 300,
            }
        },
        "insights": list(findings),
    }


DIVERGED = {
    "kind": "divergence",
    "severity": "critical",
    "step": 120,
    "message": "train/loss rose from 2.3 to 8.7",
    "suggestion": "lower the learning rate 10x (lr=0.2)",
}
PLATEAU = {"kind": "plateau", "severity": "info", "step": 200, "message": "flat", "suggestion": "stop early"}


def test_findings_come_first_most_severe_first_each_with_its_fix_and_the_question_last() -> None:
    system, user = advice.messages(summary(PLATEAU, DIVERGED), "what now?")
    text = user["content"]
    assert text.index("1. [critical] divergence (step 120)") < text.index("2. [info] plateau (step 200)")
    assert "   Fix: lower the learning rate 10x (lr=0.2)" in text
    assert text.index("Config: lr=2.0") < text.index("- train/loss: 2.3 -> 5.1 -> 8.7; last 8.7 at step 300")
    assert "\nQuestion: what now?\n" in text and system["content"] == advice.SYSTEM


def test_a_run_with_no_findings_is_put_as_healthy_and_only_then() -> None:
    system, user = advice.messages(summary(), "is it fine?")
    assert system["content"] == advice.SYSTEM_HEALTHY and "Findings: none." in user["content"]
    assert "healthy" not in advice.messages(summary(DIVERGED), "is it fine?")[0]["content"]


def test_what_prefill_reads_is_where_every_questions_prompt_starts() -> None:
    """llama.cpp reuses the longest common prefix of two prompts: the context must be exactly that."""
    for run in (summary(), summary(DIVERGED)):
        prompt = advice.messages(run, "why?")[1]["content"]
        assert prompt.startswith(advice.context(run)) and len(prompt) > len(advice.context(run))


def test_an_answer_that_names_the_critical_finding_passes_the_check() -> None:
    assert advice.check("Cause: the learning rate is too high. Fixes: 1. lr=0.2", summary(DIVERGED)) is None
    assert advice.check("It diverged; clip gradients.", summary(DIVERGED)) is None
    assert advice.check("Anything at all.", summary(PLATEAU)) is None  # nothing critical to restate


def test_an_answer_that_leaves_out_or_contradicts_a_critical_finding_gets_it_restated() -> None:
    missed = advice.check("Add more dropout to reduce overfitting.", summary(DIVERGED))
    assert missed is not None and missed.startswith("The answer leaves out what the detectors found:")
    assert "divergence (critical) at step 120: train/loss rose from 2.3 to 8.7." in missed
    assert "Fix first: lower the learning rate 10x (lr=0.2)." in missed
    healthy = advice.check("The run looks healthy; the learning rate is fine.", summary(DIVERGED))
    assert healthy is not None and healthy.startswith("The detectors disagree with that answer:")


def test_the_findings_an_answer_relied_on_are_reported_most_severe_first() -> None:
    assert [f["kind"] for f in advice.relied_on(summary(PLATEAU, DIVERGED))] == ["divergence", "plateau"]


def finding(kind: str, severity: str) -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "step": 50, "message": kind, "suggestion": f"fix {kind}"}


def test_a_cause_comes_before_what_it_explains_and_a_plateau_last_whatever_their_severities() -> None:
    """Vanishing gradients (an info by the policy) explain the loss stuck at chance (a warning): the
    model is told the cause first, and a plateau, which only describes the curve, after the rest."""
    stuck, vanishing = finding("stuck_at_chance", "warning"), finding("vanishing_gradient", "info")
    slow = finding("input_bottleneck", "info")
    order = [f["kind"] for f in advice.findings(summary(PLATEAU, stuck, vanishing, slow))]
    assert order == ["vanishing_gradient", "input_bottleneck", "stuck_at_chance", "plateau"]
    # two findings that explain each other keep the severity order
    low = finding("lr_too_low", "info")
    assert [f["kind"] for f in advice.findings(summary(low, stuck))] == ["stuck_at_chance", "lr_too_low"]
