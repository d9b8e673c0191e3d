"""Quick check: what `run.log()` of 8 scalars costs the training loop, next to the floors.

Server up (a `trainpilot serve` child process) and server down (spooling), against a bare
`list.append` and `queue.SimpleQueue.put` of the same dict, in the same process and loop shape.
The proper benchmark suite (issue 10) supersedes this.

    python bench/log_cost.py --steps 200000
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
from served import served

import trainpilot

DATA = {f"train/metric_{i}": 0.1 * i for i in range(8)}


def percentiles(fn: Callable[[dict[str, Any]], Any], steps: int) -> tuple[float, float, float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(steps):
        start = clock()
        fn(DATA)
        samples.append(clock() - start)
    samples.sort()
    return samples[steps // 2] / 1000, samples[int(steps * 0.99)] / 1000, sum(samples) / steps / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="tp-log-")
    with served(tmp) as (url, _):
        rows = []
        floor: list[Any] = []
        rows.append(("list.append", *percentiles(floor.append, args.steps)))
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        rows.append(("SimpleQueue.put", *percentiles(q.put, args.steps)))
        up = trainpilot.init(project="bench", server=url, data_dir=os.path.join(tmp, "c1"))
        rows.append(("run.log, server up", *percentiles(up.log, args.steps)))
        t0 = time.perf_counter()
        up.finish()
        flush_up = time.perf_counter() - t0
        stored = httpx.get(
            url + "/api/metrics/history",
            params={"run_id": up.id, "keys": "train/metric_0", "max_points": 2},
        ).json()
        down = trainpilot.init(project="bench", server="http://127.0.0.1:9", data_dir=os.path.join(tmp, "c2"))
        rows.append(("run.log, server down (spooling)", *percentiles(down.log, args.steps)))
        down.finish(timeout=1)
        print(f"{'case':34} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}")
        for name, p50, p99, mean in rows:
            print(f"{name:34} {p50:8.2f} {p99:8.2f} {mean:8.2f}")
        total = stored["series"]["train/metric_0"]["total"]
        print(f"server up: finish() flushed in {flush_up:.2f} s; points stored {total} / {args.steps}")


if __name__ == "__main__":
    main()
