"""Run the benchmark suite, a progress line per case, then regenerate docs/benchmarks.md.

python bench/run.py                 # make bench
python bench/run.py --quick         # make bench-quick: the same cases, small sizes
python bench/run.py --only ingest   # one case (by its result name), then the report
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import ModuleType

import case_fanout
import case_footprint
import case_history
import case_ingest
import case_instructions
import case_integrations
import case_log_cost
import case_replicas
import case_training
import report


@dataclass(frozen=True)
class Case:
    title: str
    result: str  # bench/results/<result>.json
    module: ModuleType  # run(quick) -> Path, section(result) -> list[str]


CASES = [
    Case("1. cost to the training loop (log of 8 scalars)", "log_cost", case_log_cost),
    Case("1b. instructions per log() (callgrind)", "instructions", case_instructions),
    Case("2. training slowdown (reference trainer, steps/s)", "training", case_training),
    Case("3. ingest (points/s into one server, receipt -> durable)", "ingest", case_ingest),
    Case("4. live latency and fan-out (SSE, WebSocket, floor)", "fanout", case_fanout),
    Case("5. history (one metric, downsampled)", "history", case_history),
    Case("6. footprint (import time, server RSS and CPU)", "footprint", case_footprint),
    Case("8. one replica vs two (PostgreSQL + Redis) vs SQLite", "replicas", case_replicas),
    Case("9. framework integrations (cost per training step)", "integrations", case_integrations),
]


def main() -> None:
    quick = "--quick" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    for case in CASES:
        if only is not None and case.result != only:
            continue
        print(f"case {case.title}{' (quick)' if quick else ''} ...", flush=True)
        started = time.perf_counter()
        path = case.module.run(quick)
        print(f"case {case.title}: done in {time.perf_counter() - started:.0f} s -> {path.name}", flush=True)
    report.main()


if __name__ == "__main__":
    main()
