"""Case 1, cost to the training loop: 8 scalars a step through each tool, next to the floors.

Every tool runs `bench/log_worker.py` in a process of its own (the peers in their own virtual
environments, bench/peers.py), on the same workload; each result says how much of what was logged
was persisted, so nothing dropped is counted as fast. Raw per-call samples go to
bench/results/log_cost.samples.json.gz.

The floors and trainpilot, whose ratio is the target, run in ROUNDS alternating processes, their
samples pooled: this machine's speed moves by tens of percent within minutes, and run one after
the other a floor could read a fast phase and trainpilot a slow one (or the reverse).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import peers
import plots
from common import RESULTS, save, summary_us

WORKER = Path(__file__).resolve().parent / "log_worker.py"
TOOLS: list[tuple[str, str | None]] = [  # (tool, peer environment; None: trainpilot's own)
    ("list.append", None),
    ("SimpleQueue.put", None),
    ("trainpilot (server up)", None),
    ("trainpilot (server down, spooling)", None),
    ("torch SummaryWriter", None),
    ("tensorboardX", None),
    ("MLflow (sync, SQLite)", "mlflow"),
    ("MLflow (async, SQLite)", "mlflow"),
    ("Aim", "aim"),
    ("Trackio", "trackio"),
    ("W&B (offline)", "wandb"),
]
FLOORS = {"list.append", "SimpleQueue.put"}
ROUNDS = 3


def measure(tool: str, peer: str | None, steps: int) -> dict[str, Any]:
    python, why = (sys.executable, "") if peer is None else peers.python_for(peer)
    if python is None:
        return {"tool": tool, "error": why}
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as folder:
        env = {**os.environ, **peers.env_for(peer, folder)} if peer else dict(os.environ)
        command = [python, str(WORKER), "--tool", tool, "--steps", str(steps), "--dir", folder]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        except subprocess.TimeoutExpired:
            return {"tool": tool, "error": "timed out after 30 minutes"}
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        return {"tool": tool, "error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def run(quick: bool) -> Path:
    steps = 2_000 if quick else 20_000
    paired = [tool for tool, peer in TOOLS if peer is None and (tool in FLOORS or "trainpilot" in tool)]
    pooled = alternated(paired, steps)
    rows, raw = [], {}
    for tool, peer in TOOLS:
        result = pooled[tool] if tool in pooled else measure(tool, peer, steps)
        if "error" in result:
            print(f"  {tool:36} FAILED: {result['error']}", flush=True)
            rows.append(result)
            continue
        samples = result.pop("samples_ns")
        raw[tool] = samples
        row = {**result, "us": summary_us(samples), "expected": len(samples)}
        rows.append(row)
        us = row["us"]
        print(
            f"  {tool:36} p50 {us['p50']:9.2f} µs  p99 {us['p99']:9.2f} µs  mean {us['mean']:9.2f} µs  "
            f"finish {row['finish_s']:7.2f} s  persisted {row['persisted']}/{row['expected']}",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    with gzip.open(RESULTS / "log_cost.samples.json.gz", "wt") as f:
        json.dump(raw, f)
    return save("log_cost", {"steps": steps, "rounds": ROUNDS, "quick": quick, "rows": rows})


def alternated(tools: list[str], steps: int) -> dict[str, dict[str, Any]]:
    """Each tool ROUNDS times, one process a round, in turn; samples and counts pooled, the flush
    the slowest round's. A tool that fails once is reported failed."""
    results: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    for _ in range(ROUNDS):
        for tool in tools:
            results[tool].append(measure(tool, None, steps))
    pooled = {}
    for tool, rounds in results.items():
        failed = next((r for r in rounds if "error" in r), None)
        pooled[tool] = failed or {
            **rounds[0],
            "samples_ns": [ns for r in rounds for ns in r["samples_ns"]],
            "persisted": sum(r["persisted"] for r in rounds),
            "finish_s": max(r["finish_s"] for r in rounds),
        }
    return pooled


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for `run.log()`, checked against this run's own floors and peers."""
    ok = {r["tool"]: r for r in rows if "error" not in r}
    put = ok.get("SimpleQueue.put")
    peers_ = [r for t, r in ok.items() if t not in FLOORS and not t.startswith("trainpilot")]
    persisting = [r for r in peers_ if r["persisted"] == r["expected"]]
    out = []
    for name in ("trainpilot (server up)", "trainpilot (server down, spooling)"):
        row = ok.get(name)
        if row is None or put is None:
            continue
        p50, p99 = row["us"]["p50"], row["us"]["p99"]
        ratio = p50 / put["us"]["p50"]
        verdict = "met" if ratio <= 3 else "NOT met"
        out.append(f"{name}: p50 {ratio:.1f}x SimpleQueue.put (target <= 3x): {verdict}")
        out.append(f"{name}: p99 {p99:.2f} µs (target <= 10 µs): {'met' if p99 <= 10 else 'NOT met'}")
        if persisting:
            best50 = min(persisting, key=lambda r: r["us"]["p50"])
            best99 = min(persisting, key=lambda r: r["us"]["p99"])
            f50, f99 = best50["us"]["p50"] / p50, best99["us"]["p99"] / p99
            met = f50 >= 10 and f99 >= 10
            out.append(
                f"{name}: {f50:.0f}x cheaper at p50 than the best persisting peer ({best50['tool']}), "
                f"{f99:.0f}x at p99 ({best99['tool']}) (target >= 10x): {'met' if met else 'NOT met'}"
            )
    return out


def section(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    lines = [
        "## 1. Cost to the training loop: `log()` of 8 scalars",
        "",
        f"{result['steps']:,} steps per tool, each in its own process (peers in their own virtual "
        "environments, offline); the per-call time of one step's logging (TensorBoard writers: 8 "
        "`add_scalar` calls), then the flush, then what was persisted, read back from disk or the server. "
        f"The floors and trainpilot ran {result.get('rounds', 1)} rounds of one process each, in turn, "
        "their samples pooled (flush: the slowest round), so that the machine's changes of speed weigh "
        "on the floor and on trainpilot alike.",
        "",
        "| tool | version | p50 µs | p99 µs | mean µs | flush s | persisted |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['tool']} | **not measured**: {row['error'][:160]} | | | | | |")
            continue
        us = row["us"]
        persisted = f"{row['persisted']:,} / {row['expected']:,}"
        if row["tool"] in FLOORS:
            persisted += " (in memory: a floor)"
        elif row["tool"].endswith("spooling)"):
            persisted += " (spooled to disk)"
        lines.append(
            f"| {row['tool']} | {row['version']} | {us['p50']:,.2f} | {us['p99']:,.2f} | {us['mean']:,.2f} "
            f"| {row['finish_s']:.2f} | {persisted} |"
        )
    lines += ["", "Targets (issue 10), checked against this run's own floors and peers:", ""]
    lines += [f"- {v}" for v in verdicts(rows)]
    lines += ["", f"![log() cost per tool]({plot(rows)})", ""]
    return lines


def plot(rows: list[dict[str, Any]]) -> str:
    plt = plots.pyplot()
    ok = [r for r in rows if "error" not in r]
    names = [r["tool"] for r in ok]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(ok) + 1.2))
    y = range(len(ok))
    ax.barh([i + 0.2 for i in y], [r["us"]["p50"] for r in ok], height=0.4, label="p50")
    ax.barh([i - 0.2 for i in y], [r["us"]["p99"] for r in ok], height=0.4, label="p99")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("µs per step of 8 scalars (log scale)")
    ax.legend()
    return plots.save(fig, "bench_log_cost")


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
