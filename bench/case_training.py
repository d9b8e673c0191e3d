"""Case 2, training slowdown: the reference trainer's steps per second with no telemetry, with
trainpilot and with a TensorBoard writer, same model, data and seed, each run in its own process.

Runs are interleaved (none, trainpilot, tensorboard, none, ...) so slow drifts of the machine hit
every variant alike; the median of the repeats is compared.
"""

from __future__ import annotations

import json
import os
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


# Where the processes run: on the machine's cores as the OS places them (the server shares the trainer's
# cores), or the trainer pinned to core 0 and the server to core 1, so what the trainer loses is the SDK's
# own work in its process (the measure), not the server's.
LAYOUTS = {"shared": (None, None), "apart": (0, 1)}
LAYOUT_LABELS = {"shared": "server on the same cores", "apart": "trainer on core 0, server on core 1"}


def once(variant: str, epochs: int, layout: str) -> dict[str, Any]:
    cpu, server_cpu = LAYOUTS[layout]
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
        if cpu is not None:
            command += ["--cpu", str(cpu), "--server-cpu", str(server_cpu)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=WORKER.parent)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{variant}: exit {done.returncode}: {done.stderr[-600:]}")
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def run(quick: bool) -> Path:
    repeats, epochs = (1, 4) if quick else (5, 30)  # 45 steps an epoch
    layouts = [name for name in LAYOUTS if name == "shared" or (os.cpu_count() or 1) >= 2]
    rows = []
    for layout in layouts:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for repeat in range(repeats):
            for variant in VARIANTS:
                result = once(variant, epochs, layout)
                runs[variant].append(result)
                print(
                    f"  {layout:6} {LABELS[variant]:22} run {repeat + 1}/{repeats}: {result['steps']} steps, "
                    f"{result['steps_per_s']:.1f} steps/s, CPU {result['cpu_s'] / result['steps'] * 1e3:.2f} "
                    f"ms a step, final flush {result['flush_s']:.2f} s, {result['persisted']} loss points "
                    "persisted",
                    flush=True,
                )
        base = statistics.median(r["steps_per_s"] for r in runs["none"])
        base_cpu = statistics.median(r["cpu_s"] / r["steps"] for r in runs["none"])
        for variant in VARIANTS:
            sps = statistics.median(r["steps_per_s"] for r in runs[variant])
            cpu_step = statistics.median(r["cpu_s"] / r["steps"] for r in runs[variant])
            rows.append(
                {
                    "layout": layout,
                    "variant": LABELS[variant],
                    "steps_per_s": sps,
                    "slowdown_pct": 100 * (1 - sps / base),
                    "cpu_ms_per_step": cpu_step * 1e3,
                    "cpu_pct": 100 * (cpu_step / base_cpu - 1),
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
        "server; the TensorBoard writer writes the same scalars. Steps/s are the training loop's; the final "
        "flush (`finish()`, the writer's `close()`) is timed apart. Two layouts: the server on the same two "
        "cores as the trainer (as the OS places them), and the trainer (every thread, torch's too) pinned to "
        "core 0 with the server pinned to core 1, so what the trainer loses there is the SDK's own work in "
        "its process. *CPU a step* is the trainer process's CPU time (all its threads, the SDK's sender "
        "included) over the loop, per step: it does not count time the machine's other load took, so it "
        "holds better than steps/s on a shared machine; *sender CPU* is the SDK's background thread's.",
        "",
        "| layout | telemetry | steps/s (median) | slowdown | CPU ms a step | CPU added | sender CPU % of "
        "the loop | final flush s | loss points kept | runs (steps/s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        each = ", ".join(f"{r['steps_per_s']:.1f}" for r in row["runs"])
        last = row["runs"][-1]
        kept = "-" if row["variant"] == "no telemetry" else f"{last['persisted']:,} / {last['steps']:,}"
        sender = (
            f"{statistics.median(100 * r['sender_cpu_s'] / r['seconds'] for r in row['runs']):.2f}"
            if row["variant"] == "trainpilot"
            else "-"
        )
        flush = f"{statistics.median(r['flush_s'] for r in row['runs']):.2f}"
        lines.append(
            f"| {LAYOUT_LABELS[row['layout']]} | {row['variant']} | {row['steps_per_s']:.1f} | "
            f"{row['slowdown_pct']:+.1f} % | {row['cpu_ms_per_step']:.2f} | {row['cpu_pct']:+.1f} % | "
            f"{sender} | {flush} | {kept} | {each} |"
        )
    ours = {r["layout"]: r for r in rows if r["variant"] == "trainpilot"}
    requests, steps = ours["shared"]["runs"][-1].get("requests"), ours["shared"]["runs"][-1]["steps"]
    if requests:
        lines += [
            "",
            f"The SDK posted {requests:,} batches for {steps:,} steps ({steps / requests:.1f} a request).",
        ]
    lines += ["", "Target (issue 21): trainpilot costs < 1 % of the steps/s, the server on another core:"]
    if "apart" in ours:
        apart = ours["apart"]
        met = apart["slowdown_pct"] < 1
        lines.append(
            f"- trainer on core 0, server on core 1: {apart['slowdown_pct']:+.1f} % of steps/s "
            f"({apart['cpu_pct']:+.1f} % CPU a step), {'met' if met else 'NOT met'} (a negative figure is "
            "run-to-run noise)"
        )
    else:
        lines.append("- not judged: this machine has one core, so the server cannot run on another")
    shared = ours["shared"]
    lines += [
        f"- the same cores (no target, beside it): {shared['slowdown_pct']:+.1f} % of steps/s "
        f"({shared['cpu_pct']:+.1f} % CPU a step)",
        "",
    ]
    return lines


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
