"""What every benchmark case shares: the machine's description, percentiles, result files."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
POSTGRES_URL = os.environ.get("TRAINPILOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def summary_us(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "p50": ordered[n // 2] / 1000,
        "p99": ordered[min(n - 1, int(n * 0.99))] / 1000,
        "mean": sum(ordered) / n / 1000,
        "max": ordered[-1] / 1000,
    }


def save(case: str, body: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{case}.json"
    stamp = {"case": case, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    path.write_text(json.dumps({**stamp, "machine": machine(), **body}, indent=1) + "\n")
    return path


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL on a throw-away schema of its own at TRAINPILOT_TEST_POSTGRES_URL, dropped after."""
    import psycopg

    schema = f"tp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def family(pid: int) -> list[psutil.Process]:
    """A server and its children (trainpilot's analysis process, MLflow's workers): what the server
    costs is theirs together."""
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU of the processes, every thread's."""
    return float(sum(sum(p.cpu_times()[:2]) for p in processes))
