"""Case 1, the figure that does not move with the machine's load: instructions per `log()` under
callgrind, next to `SimpleQueue.put` of the same dict, counted on the calling thread only.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import save

WORKER = Path(__file__).resolve().parent / "callgrind_worker.py"
TOOLS = {"put": "SimpleQueue.put (floor)", "log": "trainpilot run.log"}


def count(tool: str, calls: int) -> int:
    """Instructions executed by the calling thread inside the measured loop."""
    with tempfile.TemporaryDirectory(prefix="tp-callgrind-") as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--toggle-collect=builtin_eval",
            f"--callgrind-out-file={folder}/out.%p",
            sys.executable,
            str(WORKER),
            tool,
            str(calls),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"callgrind {tool}: exit {done.returncode}: {done.stderr[-400:]}")
        main_thread = next(iter(sorted(glob.glob(f"{folder}/out.*-01"))))
        totals = next(line for line in open(main_thread) if line.startswith("totals:"))
    return int(totals.split()[1])


def run(quick: bool) -> Path:
    calls = 2_000 if quick else 10_000
    if shutil.which("valgrind") is None:
        print("  valgrind not installed: not measured", flush=True)
        return save("instructions", {"quick": quick, "error": "valgrind is not installed"})
    rows = []
    for tool, label in TOOLS.items():
        per_call = count(tool, calls) / calls
        rows.append({"tool": label, "instructions_per_call": per_call})
        print(f"  {label:28} {per_call:,.0f} instructions per call", flush=True)
    return save("instructions", {"quick": quick, "calls": calls, "rows": rows})


def section(result: dict[str, Any]) -> list[str]:
    lines = ["### Instructions per `log()` (callgrind)", ""]
    if "error" in result:
        return [*lines, f"Not measured: {result['error']}.", ""]
    rows = result["rows"]
    lines += [
        f"`valgrind --tool=callgrind`, {result['calls']:,} calls after a warm-up, counted on the calling "
        "thread only (the sender's work is on its own thread), loop included; a figure that does not "
        "move with the machine's other load.",
        "",
        "| call | instructions per call | ratio to the floor |",
        "| --- | ---: | ---: |",
    ]
    floor = rows[0]["instructions_per_call"]
    for row in rows:
        ratio = row["instructions_per_call"] / floor
        lines.append(f"| {row['tool']} | {row['instructions_per_call']:,.0f} | {ratio:.2f}x |")
    return [*lines, ""]


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
