"""The benchmark's own machinery, small: a worker measures and reads back what it persisted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "tool", ["trainpilot (server up)", "trainpilot (server down, spooling)", "tensorboardX"]
)
def test_the_log_cost_worker_counts_what_was_persisted(tool: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "log_worker.py"),
            "--tool",
            tool,
            "--steps",
            "300",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["persisted"] == 300 and len(result["samples_ns"]) == 300
    assert all(ns > 0 for ns in result["samples_ns"])


@pytest.mark.parametrize("tool", ["put", "log"])
def test_the_callgrind_worker_runs_its_loop_without_valgrind_too(tool: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "callgrind_worker.py"), tool, "500"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=BENCH,
    )
    assert done.returncode == 0, done.stderr[-2000:]
