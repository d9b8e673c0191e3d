"""Case 2, training slowdown: the reference trainer's steps per second with no telemetry, with
trainpilot and with a TensorBoard writer, same model, data and seed, each run in its own process.

Runs are interleaved (none, trainpilot, tensorboard, none, ...) so slow drifts of the machine hit
every variant alike; the median of the repeats is compared.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import save

WORKER = Path(__file__).resolve().parent / "train_worker.py"
VARIANTS = ["none", "trainpilot", "tensorboard"]
LABELS = {"none": "no telemetry", "trainpilot": "trainpilot", "tensorboard": "torch SummaryWriter"}


def once(variant: str, epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tp-train-") as folder:
        command = [
            sys.executable,
            str(WORKER),
            "--variant",
            variant,
            "--epochs",
            str(epochs),
            "--dir",
            folder,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=WORKER.parent)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{variant}: exit {done.returncode}: {done.stderr[-600:]}")
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def run(quick: bool) -> Path:
    repeats, epochs = (1, 4) if quick else (3, 60)  # 45 steps an epoch
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for repeat in range(repeats):
        for variant in VARIANTS:
            result = once(variant, epochs)
            runs[variant].append(result)
            print(
                f"  {LABELS[variant]:22} run {repeat + 1}/{repeats}: {result['steps']} steps, "
                f"{result['steps_per_s']:.1f} steps/s, final flush {result['flush_s']:.2f} s, "
                f"{result['persisted']} loss points persisted",
                flush=True,
            )
    base = statistics.median(r["steps_per_s"] for r in runs["none"])
    rows = []
    for variant in VARIANTS:
        sps = statistics.median(r["steps_per_s"] for r in runs[variant])
        rows.append(
            {
                "variant": LABELS[variant],
                "steps_per_s": sps,
                "slowdown_pct": 100 * (1 - sps / base),
                "runs": runs[variant],
            }
        )
    return save("training", {"quick": quick, "epochs": epochs, "repeats": repeats, "rows": rows})


def section(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    lines = [
        "## 2. Training slowdown: the reference trainer's steps per second",
        "",
        f"The digits CNN of `trainpilot demo`, {result['epochs']} epoch(s), same seed, each run in its "
        f"own process; {result['repeats']} interleaved run(s) per variant, the median compared. trainpilot "
        "logs every step's metrics (loss, accuracy, lr, gradient norms of every layer, timings) to a real "
        "server; the "
        "TensorBoard writer writes the same scalars. Steps/s are the training loop's; the final flush "
        "(`finish()`, the writer's `close()`) is timed apart. The server runs on the same two cores.",
        "",
        "| telemetry | steps/s (median) | slowdown | final flush s | loss points kept | runs (steps/s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        each = ", ".join(f"{r['steps_per_s']:.1f}" for r in row["runs"])
        persisted = row["runs"][-1]["persisted"]
        steps = row["runs"][-1]["steps"]
        kept = "-" if row["variant"] == "no telemetry" else f"{persisted:,} / {steps:,}"
        speed, slowdown = f"{row['steps_per_s']:.1f}", f"{row['slowdown_pct']:+.1f} %"
        flush = f"{statistics.median(r['flush_s'] for r in row['runs']):.2f}"
        lines.append(f"| {row['variant']} | {speed} | {slowdown} | {flush} | {kept} | {each} |")
    trainpilot = next(r for r in rows if r["variant"] == "trainpilot")
    met = trainpilot["slowdown_pct"] < 1
    requests = trainpilot["runs"][-1].get("requests")
    if requests:
        steps = trainpilot["runs"][-1]["steps"]
        lines += [
            "",
            f"The SDK posted {requests:,} batches for {steps:,} steps ({steps / requests:.1f} a request).",
        ]
    lines += [
        "",
        f"Target: trainpilot costs < 1 % of the steps/s: {trainpilot['slowdown_pct']:+.1f} %, "
        f"{'met' if met else 'NOT met'} (a negative figure is run-to-run noise).",
        "",
    ]
    return lines


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
