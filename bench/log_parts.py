"""Where `run.log()`'s time goes, next to `SimpleQueue.put`: the same timing loop as bench case 1
(`log_worker.timed`), one process, each variant in turn, three rounds.

    python bench/log_parts.py [CALLS]

The variants add, one at a time, what `log()` must do: copy the caller's dict (it may reuse it),
stamp the wall time, build the queued tuple, then the same in a method called as `run.log` is
(the least any Python `log()` method costs: no step checked or counted), then `run.log` itself,
logging to a real `trainpilot serve` as case 1 does.
"""

from __future__ import annotations

import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from log_worker import timed
from served import served

import trainpilot
from trainpilot.sdk.run import Run


class Least:
    """A `log()` method that does only what it must: copy, stamp and queue."""

    def __init__(self) -> None:
        self.put = queue.SimpleQueue().put

    def log(self, data: dict[str, float], step: int | None = None) -> None:
        self.put(("metrics", step, time.time(), {**data}))


def variants(run: Run) -> dict[str, Callable[[int, dict[str, float]], Any]]:
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    now = time.time
    least = Least()
    return {
        "SimpleQueue.put(data) (the floor)": lambda s, m: q.put(m),
        "put(data.copy())": lambda s, m: q.put(m.copy()),
        "put((step, time(), data.copy())), inline": lambda s, m: q.put((s, now(), m.copy())),
        "Least().log(data, step=step), a method": lambda s, m: least.log(m, step=s),
        "run.log(data, step=step)": lambda s, m: run.log(m, step=s),
    }


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as folder, served(folder) as (url, _):
        run = trainpilot.init(project="bench", server=url, data_dir=folder + "/client", control=False)
        found = variants(run)
        p50: dict[str, list[float]] = {name: [] for name in found}
        for _ in range(3):
            for name, log in found.items():
                p50[name].append(statistics.median(timed(log, calls)) / 1000)
        floor = statistics.median(p50["SimpleQueue.put(data) (the floor)"])
        for name, values in p50.items():
            best = statistics.median(values)
            print(f"{name:44} p50 {best:.3f} µs = {best / floor:.2f}x the floor  (rounds: {values})")
        run.finish(timeout=600)


if __name__ == "__main__":
    main()
