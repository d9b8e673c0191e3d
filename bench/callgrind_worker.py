"""One tool's per-call loop, for `valgrind --tool=callgrind --toggle-collect=builtin_eval`.

    python bench/callgrind_worker.py {put,log} N

Setup and a warm-up run outside the measurement; the measured loop runs inside `eval()` of a
compiled code object, so the toggle counts exactly the N calls (and the loop around them, the same
for every tool). `log` uses a run whose server is down (spooling): what `log()` itself costs on
the thread that calls it does not depend on the server.
"""

from __future__ import annotations

import queue
import sys
import tempfile
from collections.abc import Callable
from typing import Any

METRICS = {f"metric_{i}": 0.5 + i for i in range(8)}


def caller(tool: str) -> Callable[[int], None]:
    if tool == "put":
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        return lambda step: q.put(("metrics", step, 0.0, dict(METRICS)))
    import trainpilot

    run = trainpilot.init(project="callgrind", server="http://127.0.0.1:9", data_dir=tempfile.mkdtemp())
    return lambda step: run.log(METRICS, step=step)


def main() -> None:
    tool, n = sys.argv[1], int(sys.argv[2])
    call = caller(tool)
    for step in range(200):
        call(step)
    loop = compile(f"for step in range(200, {200 + n}):\n    call(step)\n", "measured-loop", "exec")
    eval(loop, {"call": call})


if __name__ == "__main__":
    main()
