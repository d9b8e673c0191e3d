"""Judge the detectors on runs they were not tuned on: leave-one-group-out over a labelled corpus.

    .venv/bin/python -m trainpilot.analysis.evaluate corpus/world   # the tables of docs/analysis.md
    .venv/bin/python -m trainpilot.analysis.evaluate corpus/world --write-policy   # and rewrite policy.py

Every threshold of `TUNABLE` is chosen on all groups but one and scored on the one left out, for
every group in turn, twice: holding out each writer (names never seen) and each task (scales and
curve shapes never seen). A detector's held-out precision is the share of the runs it fired on that
list its kind as a right diagnosis; the severity policy lets it say `warning` or `critical` only
where that precision is at least `POLICY_PRECISION` in both schemes. A fault counts as caught when
one of its expected kinds is raised; a healthy run is a false alarm when anything of warning or
critical severity is raised after the policy; the delay is steps from the fault's onset to the first
expected finding.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainpilot.analysis.corpus import LabelledRun, load_corpus
from trainpilot.analysis.engine import analyze_events
from trainpilot.analysis.findings import Thresholds
from trainpilot.analysis.policy import NATURAL, POLICY

SCHEMES = ("writer", "task")
POLICY_PRECISION = 0.9
MIN_SUPPORT = 3  # held-out firings a kind needs before its precision means anything
FALSE_ALARM_COST = 3  # in choosing thresholds, one false alarm outweighs this many catches
STRONG = ("warning", "critical")
# kinds one detector names by cause share its record: a divergence early with a known learning rate is
# called lr_too_high, a later one divergence; the policy judges the detector, not the name
FAMILY = {"lr_too_high": "divergence"}

# threshold -> (the kinds it decides, candidates from the most sensitive to the most conservative)
TUNABLE: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "divergence_ratio": (("divergence", "lr_too_high"), (2.0, 3.0, 5.0)),
    "spike_floor": (("loss_spike",), (0.5, 1.0, 2.0)),
    "val_swing": (("oscillation",), (0.3, 0.5, 0.8)),
    "chance_tolerance": (("stuck_at_chance",), (0.05, 0.03, 0.02)),
    "slow_move": (("lr_too_low",), (0.1, 0.05, 0.02)),
    "underfit_level": (("underfitting",), (0.4, 0.5, 0.6)),
    "memorise_gap": (("overfitting",), (0.15, 0.25, 0.35)),
    "grad_explode_ratio": (("exploding_gradient",), (10.0, 20.0, 50.0)),
    "input_share": (("input_bottleneck",), (0.3, 0.4, 0.5)),
    "noisy_gap": (("noisy_labels",), (0.15, 0.25, 0.35)),
    "weak_class_gap": (("class_weakness",), (0.2, 0.3, 0.4)),
}

Found = tuple[str, str, int]  # kind, natural severity, step


@dataclass
class Scored:
    """Held-out findings of every run under one scheme, and what was chosen for each held-out group."""

    findings: dict[str, list[Found]] = field(default_factory=dict)  # run name -> findings
    chosen: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> threshold -> value


def grid(index: int) -> Thresholds:
    """The thresholds with every tunable at its `index`-th candidate (the last one where it has fewer)."""
    base = Thresholds()
    values: dict[str, Any] = {
        name: candidates[min(index, len(candidates) - 1)] for name, (_, candidates) in TUNABLE.items()
    }
    return dataclasses.replace(base, **values)


def grid_size() -> int:
    return max((len(candidates) for _, candidates in TUNABLE.values()), default=1)


def _analyse(run: LabelledRun) -> list[list[Found]]:
    events = run.events()
    out = []
    for index in range(grid_size()):
        found = analyze_events(events, grid(index), config=run.config, policy={})
        out.append([(f.kind, f.severity, f.step if f.step is not None else 0) for f in found])
    return out


def analyse_all(runs: list[LabelledRun], workers: int = 2) -> dict[str, list[list[Found]]]:
    """Each run's findings at every grid index (the expensive part: each run is analysed once per index)."""
    with ProcessPoolExecutor(workers) as pool:
        return dict(zip((r.name for r in runs), pool.map(_analyse, runs, chunksize=4), strict=True))


def _kind_score(kind: str, runs: Iterable[LabelledRun], found: dict[str, list[Found]]) -> int:
    score = 0
    for run in runs:
        if any(k == kind for k, _, _ in found[run.name]):
            score += 1 if kind in run.expect else -FALSE_ALARM_COST
    return score


def choose(runs: list[LabelledRun], by_index: dict[str, list[list[Found]]]) -> dict[str, int]:
    """For each tunable, the grid index that scores best on `runs` (ties: the more conservative)."""
    chosen = {}
    for name, (kinds, candidates) in TUNABLE.items():
        best, best_score = 0, None
        for index in range(len(candidates)):
            at = {r.name: by_index[r.name][index] for r in runs}
            score = sum(_kind_score(kind, runs, at) for kind in kinds)
            if best_score is None or score >= best_score:
                best, best_score = index, score
        chosen[name] = best
    return chosen


def _governing(kind: str) -> str | None:
    return next((name for name, (kinds, _) in TUNABLE.items() if kind in kinds), None)


def _pick(found_by_index: list[list[Found]], chosen: dict[str, int]) -> list[Found]:
    """A run's findings where each kind comes from the grid index its own threshold was chosen at."""
    if not TUNABLE:
        return found_by_index[0]
    out = []
    kinds = {k for found in found_by_index for k, _, _ in found}
    for kind in kinds:
        name = _governing(kind)
        index = chosen[name] if name is not None else 0
        out += [f for f in found_by_index[index] if f[0] == kind]
    return sorted(out, key=lambda f: f[2])


def hold_out(runs: list[LabelledRun], by_index: dict[str, list[list[Found]]], scheme: str) -> Scored:
    scored = Scored()
    for group in sorted({r.group(scheme) for r in runs}):
        train = [r for r in runs if r.group(scheme) != group]
        chosen = choose(train, by_index)
        scored.chosen[group] = {n: TUNABLE[n][1][i] for n, i in chosen.items()}
        for run in runs:
            if run.group(scheme) == group:
                scored.findings[run.name] = _pick(by_index[run.name], chosen)
    return scored


@dataclass
class KindStats:
    fired: int = 0
    correct: int = 0
    strong: int = 0  # runs where it said warning or critical (its own severity, before the policy)
    strong_correct: int = 0
    healthy: int = 0  # healthy runs it fired on
    delays: list[int] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.correct / self.fired if self.fired else None

    @property
    def strong_precision(self) -> float | None:
        return self.strong_correct / self.strong if self.strong else None


def kind_stats(runs: list[LabelledRun], findings: dict[str, list[Found]]) -> dict[str, KindStats]:
    stats: dict[str, KindStats] = {}
    for run in runs:
        first: dict[str, tuple[int, bool]] = {}
        for kind, severity, step in findings[run.name]:
            was_strong = first.get(kind, (step, False))[1]
            first[kind] = (first.get(kind, (step, False))[0], was_strong or severity in STRONG)
        for kind, (step, strong) in first.items():
            s = stats.setdefault(kind, KindStats())
            s.fired += 1
            s.strong += strong
            s.healthy += run.healthy
            if kind in run.expect:
                s.correct += 1
                s.strong_correct += strong
                s.delays.append(max(0, step - run.onset))
    return stats


def derive_policy(runs: list[LabelledRun], schemes: dict[str, Scored]) -> dict[str, str]:
    """Each kind's highest severity: its natural one where the held-out precision of its warnings and
    alarms reaches the bar in every scheme (with enough of them to tell), else info."""
    policy = {}
    for kind, natural in NATURAL.items():
        ok = True
        members = [k for k in NATURAL if FAMILY.get(k, k) == FAMILY.get(kind, kind)]
        for scored in schemes.values():
            stats = kind_stats(runs, scored.findings)
            s = _pooled([stats[k] for k in members if k in stats])
            ok = (
                ok
                and s is not None
                and s.strong >= MIN_SUPPORT
                and (s.strong_precision or 0) >= POLICY_PRECISION
            )
        policy[kind] = natural if ok else "info"
    return policy


def _pooled(parts: list[KindStats]) -> KindStats | None:
    if not parts:
        return None
    pooled = KindStats()
    for part in parts:
        pooled.fired += part.fired
        pooled.correct += part.correct
        pooled.strong += part.strong
        pooled.strong_correct += part.strong_correct
    return pooled


def capped(found: list[Found], policy: dict[str, str]) -> list[Found]:
    order = {"info": 0, "warning": 1, "critical": 2}
    return [(k, min(s, policy.get(k, s), key=order.__getitem__), step) for k, s, step in found]


@dataclass
class Evaluation:
    runs: list[LabelledRun]
    schemes: dict[str, Scored]
    policy: dict[str, str]  # derived from the held-out precision
    shipped: dict[str, float]  # thresholds chosen on every group: what the defaults should be

    def after_policy(self, scheme: str) -> dict[str, list[Found]]:
        return {n: capped(f, self.policy) for n, f in self.schemes[scheme].findings.items()}


def evaluate(corpus: Path, workers: int = 2) -> Evaluation:
    runs = load_corpus(corpus)
    by_index = analyse_all(runs, workers)
    schemes = {scheme: hold_out(runs, by_index, scheme) for scheme in SCHEMES}
    everything = choose(runs, by_index)
    shipped = {n: TUNABLE[n][1][i] for n, i in everything.items()}
    return Evaluation(runs, schemes, derive_policy(runs, schemes), shipped)


@dataclass
class Overall:
    faults: int
    caught: int  # any severity
    caught_strong: int  # warning or critical, after the policy
    healthy: int
    alarmed: int
    nan_runs: int
    nan_at_step: int
    lr_high_runs: int
    lr_high_within_50: int


def overall(ev: Evaluation, scheme: str) -> Overall:
    findings = ev.after_policy(scheme)
    faults = [r for r in ev.runs if not r.healthy]
    healthy = [r for r in ev.runs if r.healthy]
    caught = [r for r in faults if any(k in r.expect for k, _, _ in findings[r.name])]
    strong = [r for r in faults if any(k in r.expect and s in STRONG for k, s, _ in findings[r.name])]
    alarmed = [r for r in healthy if any(s in STRONG for _, s, _ in findings[r.name])]
    nan_runs = [r for r in ev.runs if _first_nan(r) is not None]
    nan_ok = [
        r
        for r in nan_runs
        if any(k == "nan_inf" and step == _first_nan(r) for k, _, step in findings[r.name])
    ]
    lr_high = [r for r in faults if r.label == "lr_high"]
    lr_ok = [
        r
        for r in lr_high
        if any(k in r.expect and s in STRONG and step - r.onset <= 50 for k, s, step in findings[r.name])
    ]
    return Overall(
        len(faults),
        len(caught),
        len(strong),
        len(healthy),
        len(alarmed),
        len(nan_runs),
        len(nan_ok),
        len(lr_high),
        len(lr_ok),
    )


def _first_nan(run: LabelledRun) -> int | None:
    for event in run.events():
        if any(isinstance(v, str) or v is None for v in (event.get("data") or {}).values()):
            return int(event["step"])
    return None


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _median(values: list[int]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def report(ev: Evaluation) -> str:
    """The tables of docs/analysis.md, as markdown."""
    per_scheme = {scheme: kind_stats(ev.runs, ev.schemes[scheme].findings) for scheme in SCHEMES}
    kinds = sorted(set(NATURAL) | {k for stats in per_scheme.values() for k in stats})
    lines = [
        f"Corpus: {len(ev.runs)} runs ({sum(r.healthy for r in ev.runs)} healthy), "
        f"{len({r.writer for r in ev.runs})} writers, {len({r.task for r in ev.runs})} tasks, "
        f"{len({r.model for r in ev.runs})} model families.",
        "",
        "Per detector, held out by writer (by task in brackets):",
        "",
        "| kind | policy | fired on (runs) | right diagnosis | precision | as warning or worse: runs, "
        "precision | healthy runs it fired on | median delay (steps) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in kinds:
        w, t = (per_scheme[s].get(kind, KindStats()) for s in SCHEMES)
        lines.append(
            f"| {kind} | {ev.policy.get(kind, '-')} | {w.fired} ({t.fired}) | {w.correct} ({t.correct}) "
            f"| {_f(w.precision)} ({_f(t.precision)}) | {w.strong}, {_f(w.strong_precision)} "
            f"({t.strong}, {_f(t.strong_precision)}) | {w.healthy} ({t.healthy}) "
            f"| {_median(w.delays)} ({_median(t.delays)}) |"
        )
    lines += ["", "Per fault, held out by writer (by task in brackets):", ""]
    lines += [
        "| fault | runs | caught | caught at warning or worse | expected kinds |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    labels = Counter(r.label for r in ev.runs if not r.healthy)
    for label in sorted(labels):
        runs = [r for r in ev.runs if r.label == label]
        cells = []
        for strong in (False, True):
            counts = []
            for scheme in SCHEMES:
                found = ev.after_policy(scheme)
                counts.append(
                    sum(
                        any(k in r.expect and (s in STRONG or not strong) for k, s, _ in found[r.name])
                        for r in runs
                    )
                )
            cells.append(f"{counts[0]} ({counts[1]})")
        expect = ", ".join(sorted(runs[0].expect))
        lines.append(f"| {label} | {len(runs)} | {cells[0]} | {cells[1]} | {expect} |")
    lines += [
        "",
        "Per group held out:",
        "",
        "| held out | healthy runs alarmed | faults caught |",
        "| --- | ---: | ---: |",
    ]
    for scheme in SCHEMES:
        found = ev.after_policy(scheme)
        for group in sorted({r.group(scheme) for r in ev.runs}):
            members = [r for r in ev.runs if r.group(scheme) == group]
            healthy = [r for r in members if r.healthy]
            faults = [r for r in members if not r.healthy]
            alarmed = sum(any(s in STRONG for _, s, _ in found[r.name]) for r in healthy)
            caught = sum(any(k in r.expect for k, _, _ in found[r.name]) for r in faults)
            lines.append(f"| {scheme} {group} | {alarmed}/{len(healthy)} | {caught}/{len(faults)} |")
    lines += [""]
    for scheme in SCHEMES:
        o = overall(ev, scheme)
        lines.append(
            f"Held out by {scheme}: recall {o.caught}/{o.faults} = {o.caught / max(o.faults, 1):.2f} "
            f"({o.caught_strong} at warning or worse); healthy runs with a warning or worse "
            f"{o.alarmed}/{o.healthy} = {o.alarmed / max(o.healthy, 1):.3f}; NaN flagged at its step "
            f"{o.nan_at_step}/{o.nan_runs}; far too high learning rate flagged within 50 steps "
            f"{o.lr_high_within_50}/{o.lr_high_runs}."
        )
    if ev.shipped:
        lines += [
            "",
            "Thresholds chosen on every group (the defaults): "
            + ", ".join(f"`{n}={v:g}`" for n, v in sorted(ev.shipped.items())),
        ]
    return "\n".join(lines)


def policy_source(policy: dict[str, str]) -> str:
    body = "".join(f'    "{kind}": "{severity}",\n' for kind, severity in sorted(policy.items()))
    return POLICY_HEADER + "POLICY: dict[str, str] = {\n" + body + "}\n"


POLICY_HEADER = '''"""The severity policy: the most a detector may say, from its held-out precision.

Generated by ``python -m trainpilot.analysis.evaluate corpus --write-policy`` (evaluate.py): a kind
keeps its natural severity (`NATURAL`) only where its precision on held-out groups reached 0.9;
otherwise it says ``info``. tests/test_analysis_corpus.py fails when this file and the corpus disagree.
"""

from __future__ import annotations

from trainpilot.analysis.findings import NATURAL

__all__ = ["NATURAL", "POLICY"]

'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "corpus", nargs="?", default="corpus/world", help="a folder of manifest.json files and runs"
    )
    parser.add_argument(
        "--write-policy", action="store_true", help="rewrite analysis/policy.py from the result"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ev = evaluate(Path(args.corpus), args.workers)
    print(report(ev))
    if args.write_policy:
        target = Path(__file__).with_name("policy.py")
        target.write_text(policy_source(ev.policy))
        print(f"\nwrote {target}")
    elif ev.policy != POLICY:
        changed = {k: (POLICY.get(k), v) for k, v in ev.policy.items() if POLICY.get(k) != v}
        print(f"\nthe shipped policy differs from this evaluation's: {changed}; --write-policy updates it")


if __name__ == "__main__":
    main()
