"""A compact, numeric summary of a run: what an LLM advisor is given, and nothing else.

Curves become a few numbers per phase (first, middle and last third: mean, min, max, last value),
so even a small local model sees the shape of a run in a few hundred tokens, and no raw data leaves.
"""

from __future__ import annotations

from typing import Any

from trainpilot.analysis.names import per_class, role
from trainpilot.events import Run
from trainpilot.store import Series, Store

PHASES = ("early", "middle", "late")


def _r(x: float) -> float:
    return float(f"{x:.4g}")


def curve(series: Series) -> dict[str, Any]:
    points = series.points
    if not points:
        return {}
    out: dict[str, Any] = {
        "points": series.total,
        "first_step": points[0].step,
        "last_step": points[-1].step,
        "last": _r(points[-1].value),
    }
    third = max(1, len(points) // 3)
    for i, name in enumerate(PHASES):
        chunk = points[i * third : (i + 1) * third] if i < 2 else points[2 * third :]
        values = [p.value for p in chunk] or [points[-1].value]
        out[name] = {"mean": _r(sum(values) / len(values)), "min": _r(min(values)), "max": _r(max(values))}
    return out


def summarize(
    run: Run, series: list[Series], insights: list[dict[str, Any]], max_metrics: int = 24
) -> dict[str, Any]:
    """The run's config, status, per-metric phase statistics and findings, bounded in size."""
    ranked = sorted(series, key=lambda s: (not any(w in s.key for w in ("loss", "acc", "lr", "grad")), s.key))
    return {
        "run": {
            "id": run.id,
            "name": run.name,
            "project": run.project,
            "status": run.status,
            "last_step": run.last_step,
        },
        "config": {k: v for k, v in list(run.config.items())[:40] if isinstance(v, int | float | str | bool)},
        "metrics": {s.key: curve(s) for s in ranked[:max_metrics] if s.points},
        "insights": [
            {k: i.get(k) for k in ("kind", "severity", "step", "message", "evidence", "suggestion")}
            for i in insights[-20:]
        ],
    }


async def run_summary(store: Store, run_id: str) -> dict[str, Any]:
    """The summary of a stored run: its record, 300-point curves and its findings so far."""
    run = await store.get_run(run_id)
    series = await store.history(run_id, (await store.metric_keys(run_id))[:64], max_points=300)
    found = [e.data for e in await store.read(0, run_id=run_id, kinds=frozenset({"insight"}), limit=200)]
    return summarize(run, series, [f for f in found if f.get("kind") != "explanation"])


def rules_answer(summary: dict[str, Any], question: str) -> str:
    """What the rules alone can say, for when no LLM is configured (and labelled so)."""
    lines = ["(Rules only: no LLM is configured, so this answer comes from the detectors, not a model.)"]
    findings = summary["insights"]
    if findings:
        lines.append(f"The detectors found {len(findings)} problem(s) in run {summary['run']['name']}:")
        for f in findings:
            lines.append(f"- [{f['severity']}] {f['kind']} at step {f['step']}: {f['message']}")
    else:
        lines.append(f"The detectors found no problem in run {summary['run']['name']} so far.")
    for key in _headline_keys(summary["metrics"]):
        stats = summary["metrics"][key]
        lines.append(
            f"{key}: early mean {stats['early']['mean']}, late mean {stats['late']['mean']}, "
            f"last {stats['last']} at step {stats['last_step']}."
        )
    lines.append(
        f"Your question was: {question!r}. Give the server a model (--llm-model, or TRAINPILOT_LLM_URL "
        "and TRAINPILOT_LLM_MODEL) for a free-form answer."
    )
    return "\n".join(lines)


def _headline_keys(metrics: dict[str, Any]) -> list[str]:
    """The total losses and the accuracies, whatever the program that logged them called them."""
    keep = []
    for key in metrics:
        r = role(key)
        if (r.quantity == "loss" and not r.component) or (r.quantity == "acc" and per_class(key) is None):
            keep.append(key)
    return keep[:6]
