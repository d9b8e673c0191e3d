"""Case 9, the framework integrations' cost per training step: scikit-learn's digits trained by
Lightning, the Hugging Face Trainer and Keras 3's `fit()`, each without trainpilot and with its integration
streaming to a real server (started here, on the same machine), each run in its own process.

Variants are interleaved (none, trainpilot, none, ...) so drifts of the machine hit both alike; the
median per step is compared. The model is tiny on purpose (a step of a few ms), so the integration's
fixed cost per step shows: with a real CV model it is the same microseconds on a longer step.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import save
from served import served

WORKER = Path(__file__).resolve().parent / "integration_worker.py"
FRAMEWORKS = {"lightning": "lightning", "huggingface": "transformers", "keras": "keras"}
LABELS = {"lightning": "PyTorch Lightning", "huggingface": "Hugging Face Trainer", "keras": "Keras 3 (torch)"}


def once(framework: str, variant: str, steps: int, url: str) -> float:
    command = [sys.executable, str(WORKER), "--framework", framework, "--variant", variant]
    command += ["--steps", str(steps), "--server", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=WORKER.parent)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{framework}/{variant}: exit {done.returncode}: {done.stderr[-800:]}")
    ms: float = json.loads(line[len("RESULT ") :])["ms_per_step"]
    return ms


def run(quick: bool) -> Path:
    repeats, steps = (1, 200) if quick else (3, 1000)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tp-integ-") as folder, served(folder) as (url, _):
        for framework, module in FRAMEWORKS.items():
            if importlib.util.find_spec(module) is None:
                print(f"  {LABELS[framework]}: not installed, skipped", flush=True)
                continue
            times: dict[str, list[float]] = {"none": [], "trainpilot": []}
            for repeat in range(repeats):
                for variant in times:
                    times[variant].append(once(framework, variant, steps, url))
                    print(
                        f"  {LABELS[framework]:22} {variant:10} run {repeat + 1}/{repeats}: "
                        f"{times[variant][-1]:.3f} ms/step",
                        flush=True,
                    )
            none, with_tp = (statistics.median(times[v]) for v in ("none", "trainpilot"))
            rows.append(
                {
                    "framework": LABELS[framework],
                    "ms_none": none,
                    "ms_trainpilot": with_tp,
                    "us_added": 1000 * (with_tp - none),
                    "pct_added": 100 * (with_tp / none - 1),
                    "runs": times,
                }
            )
    return save("integrations", {"quick": quick, "steps": steps, "repeats": repeats, "rows": rows})


def section(result: dict[str, Any]) -> list[str]:
    lines = [
        "## 9. Framework integrations: the cost per training step",
        "",
        f"scikit-learn's digits, a 64-64-10 MLP, batch 16, {result['steps']} steps per run (the first 50 "
        f"not timed), {result['repeats']} interleaved run(s) per variant, the median compared. With "
        "trainpilot the framework's integration logs every step's metrics and lr to a real server on the "
        "same two cores, checks for commands at every batch end and samples system load every 10 s. "
        "A step this small makes the integration's fixed cost visible; on a real CV model's step of "
        "tens of milliseconds the same microseconds are a fraction of a percent.",
        "",
        "| framework | ms/step without | ms/step with trainpilot | added per step | added | runs (ms/step) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["rows"]:
        each = "; ".join(
            f"{variant}: " + ", ".join(f"{ms:.3f}" for ms in runs) for variant, runs in row["runs"].items()
        )
        lines.append(
            f"| {row['framework']} | {row['ms_none']:.3f} | {row['ms_trainpilot']:.3f} | "
            f"{row['us_added']:+.0f} µs | {row['pct_added']:+.1f} % | {each} |"
        )
    return [*lines, ""]


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
