"""The first round's detectors next to today's: on the world corpus, and in cost per logged step.

    cd bench && ../.venv/bin/python analysis_rounds.py

The first round's analysis (commit 763378e, before the rework) is read out of git into a temporary
package and scored with today's counting: a healthy run is alarmed by any warning or critical
finding, a fault caught by any of its accepted kinds. Its thresholds were never tuned on this corpus,
so its figures are held out by construction; today's held-out figures are `make analysis-eval`'s.
Both engines then analyse the same 20,000-step run of 8 metrics in this process, best of three,
and the ratio is printed (absolute times depend on the machine, the ratio much less).
"""

from __future__ import annotations

import importlib
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from trainpilot.analysis.corpus import load_corpus
from trainpilot.analysis.engine import RunAnalysis

ROOT = Path(__file__).resolve().parent.parent
FIRST_ROUND = "763378e2972da3ca4c93ea348ba1c7aa1cb99a46"
MODULES = ("names", "rules", "engine")


def first_round(folder: Path) -> Any:
    """The first round's `analysis.engine`, importable as `first_round.engine`."""
    package = folder / "first_round"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in MODULES:
        source = subprocess.run(
            ["git", "show", f"{FIRST_ROUND}:src/trainpilot/analysis/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / f"{name}.py").write_text(source.replace("trainpilot.analysis.", "first_round."))
    sys.path.insert(0, str(folder))
    return importlib.import_module("first_round.engine")


def score(engine: Any) -> None:
    healthy = alarmed = faults = caught = 0
    by_kind: Counter[str] = Counter()
    for run in load_corpus(ROOT / "corpus" / "world"):
        found = engine.analyze_events(run.events())
        strong = {f.kind for f in found if f.severity in ("warning", "critical")}
        if run.healthy:
            healthy += 1
            alarmed += bool(strong)
            by_kind.update(strong)
        else:
            faults += 1
            caught += any(f.kind in run.expect for f in found)
    print(
        f"first round on corpus/world: {alarmed}/{healthy} healthy runs with a warning or worse "
        f"({dict(by_kind.most_common())}); {caught}/{faults} faults caught"
    )


def cost(engine: Any) -> None:
    rng = random.Random(0)
    rows = [
        {
            "train/loss": 2.3 * math.exp(-i / 3000) + 0.05 * rng.random(),
            "train/acc": min(1.0, i / 5000),
            "lr": 0.05,
            "grad_norm": 1 + rng.random(),
            "step_time_s": 0.01,
            "data_time_s": 0.001,
            "images_per_s": 3000.0,
            "epoch": float(i // 400),
        }
        for i in range(20_000)
    ]
    per_step = {}
    for name, make in (("today", RunAnalysis), ("first round", engine.RunAnalysis)):
        best = math.inf
        for _ in range(3):
            analysis = make()
            started = time.perf_counter()
            for step, row in enumerate(rows):
                analysis.observe(step, row)
            best = min(best, time.perf_counter() - started)
        per_step[name] = best / len(rows) * 1e6
        print(f"{name}: {per_step[name]:.1f} us per step of 8 metrics")
    print(f"today / first round: {per_step['today'] / per_step['first round']:.2f}x")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine = first_round(Path(folder))
        score(engine)
        cost(engine)


if __name__ == "__main__":
    main()
