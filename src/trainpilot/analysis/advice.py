"""What the advisor tells a model about a run, and what is checked in the answer it gets back.

Small local models (0.5B to 1.5B parameters) give the right advice when the facts are put to them as
facts: the detectors' findings first, a cause before what it explains, each with its suggested fix,
then the config and the curves in a few numbers. Asked for a set form (the cause, then one fix per
finding) they mostly follow it; told what a healthy run looks like only when the run is healthy
(a small model repeats any sentence it is given as an option); when they do not follow it,
`check` notices an answer that leaves a critical finding out or calls the run healthy, and the
finding is restated under the answer instead of leaving the user with advice that contradicts it.
"""

from __future__ import annotations

import re
from typing import Any

from trainpilot.analysis.findings import CAUSES, NATURAL

ADVISOR = (
    "You are trainpilot's training advisor for computer-vision models. The detectors measured the run below"
)
SYSTEM = (
    ADVISOR + "; their findings are facts about it. Answer in this form:\n"
    "Cause: one sentence, the cause the first finding names.\n"
    "Fixes:\n1. the fix for the first finding, concrete, with values\n2. the fix for the next one, "
    "and so on, one per finding, in their order.\n"
    "Then, if the question asks something else, answer it in at most two sentences. Name no problem "
    "that is not among the findings. At most 150 words."
)
SYSTEM_HEALTHY = (
    ADVISOR + " and found no problem in it. Say in one sentence that it looks healthy so far, name no "
    "problem, and answer the question briefly from the numbers. At most 80 words."
)

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}

# Words that name each kind of finding in an answer: the check asks for one of them.
NAMES: dict[str, str] = {
    "nan_inf": r"\bnan\b|\binf\b|not a number|numerical",
    "divergence": r"diverg|learning rate|\blr\b|blow|explod",
    "lr_too_high": r"learning rate|\blr\b",
    "exploding_gradient": r"gradient|clip",
    "loss_spike": r"spike",
    "oscillation": r"oscillat|unstable|learning rate|\blr\b",
    "lr_too_low": r"learning rate|\blr\b",
    "stuck_at_chance": r"chance|not learning|random",
    "underfitting": r"underfit|capacity|too (small|simple)|not learning",
    "plateau": r"plateau|stall|flat",
    "bad_initial_loss": r"initiali[sz]|initial loss|\binit\b",
    "overfitting": r"overfit|generali[sz]",
    "vanishing_gradient": r"vanish|gradient",
    "dying_relu": r"relu|dead|dying",
    "input_bottleneck": r"data ?load|input|worker|bottleneck|pipeline",
    "noisy_labels": r"label",
    "class_weakness": r"class",
    "unshuffled_data": r"shuffl|order",
}
HEALTHY = re.compile(
    r"\b(looks|is|seems) (healthy|fine|good)|no (problems?|issues?) (found|detected)?|"
    r"training (is )?(going|progressing) well|nothing needs chang",
    re.IGNORECASE,
)


def findings(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's findings, one per kind (the first, the most severe), since a NaN in five metrics is one
    fault with one fix, not five; a cause before what it explains (vanishing gradients before the
    loss stuck at chance they produce, whatever their severities) and a plateau last, then most
    severe first, then in the order they were found."""
    found = [f for f in summary.get("insights", []) if f.get("kind") in NATURAL]
    ranked = sorted(found, key=lambda f: SEVERITY_ORDER.get(str(f.get("severity")), 3))
    first: dict[str, dict[str, Any]] = {}
    for finding in ranked:
        first.setdefault(str(finding["kind"]), finding)
    kinds = set(first)

    def explained(kind: str) -> bool:
        return any(kind in CAUSES.get(other, ()) and other not in CAUSES.get(kind, ()) for other in kinds)

    # a plateau describes the curve; any other finding says more about why
    return sorted(first.values(), key=lambda f: (explained(str(f["kind"])), f["kind"] == "plateau"))


def messages(summary: dict[str, Any], question: str) -> list[dict[str, str]]:
    system = SYSTEM if findings(summary) else SYSTEM_HEALTHY
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt(summary, question)}]


def prompt(summary: dict[str, Any], question: str) -> str:
    """The run as plain text, what changes least first (findings, config, then the curves), the
    question last: a local model's cache keeps what two questions about a run share."""
    form = "Answer as: Cause: ..., then Fixes: 1. ..." if findings(summary) else "Answer briefly."
    return context(summary) + f"\nQuestion: {question}\n{form}"


def context(summary: dict[str, Any]) -> str:
    """Everything the model is told about the run, without the question."""
    run = summary.get("run", {})
    lines = [f"Run {run.get('name')!r} ({run.get('status')}, at step {run.get('last_step')})."]
    found = findings(summary)
    if found:
        lines.append("Findings, a cause before what it explains, then the most severe first:")
        for index, f in enumerate(found, 1):
            lines.append(
                f"{index}. [{f.get('severity')}] {_kind(f)} (step {f.get('step')}): {f.get('message')}"
            )
            if f.get("suggestion"):
                lines.append(f"   Fix: {f['suggestion']}")
    else:
        lines.append("Findings: none.")
    config = summary.get("config") or {}
    if config:
        lines.append("Config: " + ", ".join(f"{k}={v}" for k, v in list(config.items())[:16]))
    metrics = summary.get("metrics") or {}
    if metrics:
        lines.append("Curves (mean of the first, middle and last third of the run; last value):")
        for key, stats in list(metrics.items())[:8]:
            means = " -> ".join(str(stats[p]["mean"]) for p in ("early", "middle", "late") if p in stats)
            lines.append(f"- {key}: {means}; last {stats.get('last')} at step {stats.get('last_step')}")
    return "\n".join(lines)


def check(answer: str, summary: dict[str, Any]) -> str | None:
    """The critical findings an answer leaves out or contradicts (calling the run healthy), restated
    with their fixes; None when the answer agrees with them."""
    critical = [f for f in findings(summary) if f.get("severity") == "critical"]
    if not critical:
        return None
    healthy = HEALTHY.search(answer) is not None
    missed = [f for f in critical if healthy or not re.search(NAMES.get(f["kind"], f["kind"]), answer, re.I)]
    if not missed:
        return None
    lines = [
        "The detectors disagree with that answer:"
        if healthy
        else "The answer leaves out what the detectors found:"
    ]
    for f in missed:
        fix = f" Fix first: {f['suggestion']}." if f.get("suggestion") else ""
        said = str(f.get("message", "")).rstrip(".")
        lines.append(f"- {_kind(f)} (critical) at step {f.get('step')}: {said}.{fix}")
    return "\n".join(lines)


def relied_on(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings an answer was given, as the ask endpoint reports them."""
    return [{k: f.get(k) for k in ("kind", "severity", "step", "message")} for f in findings(summary)]


def _kind(finding: dict[str, Any]) -> str:
    return str(finding.get("kind", "")).replace("_", " ")
