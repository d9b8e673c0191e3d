"""Score the detectors on the recorded corpus: recall per fault, precision per detector, false alarms.

    .venv/bin/python -m trainpilot.analysis.evaluate corpus            # a table
    .venv/bin/python -m trainpilot.analysis.evaluate corpus --markdown # the table in docs/analysis.md

A fault counts as detected when any of its case's expected kinds is raised (any severity); a
healthy run raises a false alarm with any warning or critical finding. Delay: steps from the
fault's onset to the first expected finding.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainpilot.analysis.engine import analyze_events
from trainpilot.analysis.rules import Finding


@dataclass
class CaseScore:
    runs: int = 0
    detected: int = 0
    delays: list[int] = field(default_factory=list)
    false_alarms: int = 0


def load_run(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(corpus: Path) -> tuple[dict[str, CaseScore], dict[str, list[int]], dict[str, dict[str, Any]]]:
    cases: dict[str, dict[str, Any]] = json.loads((corpus / "cases.json").read_text())
    scores = {name: CaseScore() for name in cases}
    fired: dict[str, list[int]] = {}  # kind -> [runs where it fired, of which expected]
    for path in sorted((corpus / "runs").glob("*.jsonl.gz")):
        name = path.name.split("-s")[0]
        if name not in cases:
            continue
        events = load_run(path)
        findings: list[Finding] = analyze_events(events)
        case, score = cases[name], scores[name]
        score.runs += 1
        expect = set(case["expect"])
        for kind in {f.kind for f in findings}:
            counts = fired.setdefault(kind, [0, 0])
            counts[0] += 1
            counts[1] += kind in expect
        if not expect:
            score.false_alarms += any(f.severity in ("warning", "critical") for f in findings)
            continue
        hits = [f for f in findings if f.kind in expect]
        if hits:
            score.detected += 1
            last_step = max(e["step"] for e in events)
            onset = last_step // 3 if case["onset"] == "third" else int(case["onset"])
            score.delays.append(max(0, (hits[0].step or 0) - onset))
    return scores, fired, cases


def table(corpus: Path, markdown: bool) -> str:
    scores, fired, cases = evaluate(corpus)
    lines = [
        "| case | runs | expected kinds | recall | median delay (steps) | false alarms |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, s in scores.items():
        expect = ", ".join(cases[name]["expect"]) or "(healthy)"
        recall = "-" if not cases[name]["expect"] else f"{s.detected}/{s.runs}"
        delay = f"{statistics.median(s.delays):.0f}" if s.delays else "-"
        alarms = f"{s.false_alarms}/{s.runs}" if not cases[name]["expect"] else "-"
        lines.append(f"| {name} | {s.runs} | {expect} | {recall} | {delay} | {alarms} |")
    lines += [
        "",
        "| detector | runs where it fired | of which its case expected it | precision |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, (runs, hits) in sorted(fired.items()):
        lines.append(f"| {kind} | {runs} | {hits} | {hits / runs:.2f} |")
    healthy = [s for n, s in scores.items() if not cases[n]["expect"]]
    faulty = [s for n, s in scores.items() if cases[n]["expect"]]
    false_alarms = sum(s.false_alarms for s in healthy)
    total_healthy = sum(s.runs for s in healthy)
    detected = sum(s.detected for s in faulty)
    total_faulty = sum(s.runs for s in faulty)
    lines += [
        "",
        f"Overall: {detected}/{total_faulty} faulty runs detected; "
        f"{false_alarms}/{total_healthy} healthy runs with a warning or critical finding.",
    ]
    text = "\n".join(lines)
    return text if markdown else text.replace("| --- ", "|-----").replace("| ---: ", "|-----:")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", nargs="?", default="corpus", help="the corpus folder (cases.json, runs/)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(table(Path(args.corpus), args.markdown))


if __name__ == "__main__":
    main()
