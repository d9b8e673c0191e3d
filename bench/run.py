"""Run the benchmark suite, a progress line per case, then regenerate docs/benchmarks.md.

python bench/run.py            # make bench
python bench/run.py --quick    # make bench-quick: the same cases, small sizes
"""

from __future__ import annotations

import sys
import time

import case_log_cost
import case_training
import report

CASES = [
    ("1. cost to the training loop (log of 8 scalars)", case_log_cost.run),
    ("2. training slowdown (reference trainer, steps/s)", case_training.run),
]


def main() -> None:
    quick = "--quick" in sys.argv
    for name, run in CASES:
        print(f"case {name}{' (quick)' if quick else ''} ...", flush=True)
        started = time.perf_counter()
        path = run(quick)
        print(f"case {name}: done in {time.perf_counter() - started:.0f} s -> {path.name}", flush=True)
    report.main()


if __name__ == "__main__":
    main()
