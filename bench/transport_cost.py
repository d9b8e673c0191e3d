"""What one batch costs the training process to send: the SDK's transport (`http.client`, one kept-alive
connection) next to httpx, against a real `trainpilot serve`, CPU of the sending thread and wall time.

    python bench/transport_cost.py [BATCHES]

Each batch is one event of the reference trainer's size (15 metrics), as a 2-ms training step sends.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from served import served

from trainpilot.sdk.transport import HttpTransport

METRICS = {f"grad_norm/layer/l{i}": 0.1 * i for i in range(12)} | {
    "train/loss": 0.5,
    "train/acc": 0.9,
    "lr": 0.1,
}


def timed(send: Callable[[list[dict[str, Any]]], None], batches: int, first_seq: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per batch, after a warm-up of 50."""
    seq = first_seq
    for _ in range(50):
        seq += 1
        send([{"seq": seq, "kind": "metrics", "ts": time.time(), "step": seq, "data": METRICS}])
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(batches):
        seq += 1
        send([{"seq": seq, "kind": "metrics", "ts": time.time(), "step": seq, "data": METRICS}])
    return (time.thread_time() - cpu) / batches * 1e6, (time.perf_counter() - wall) / batches * 1e6


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as folder, served(folder) as (url, _):
        ours = HttpTransport(url)
        ours.create_run({"id": "cost", "project": "bench", "name": "cost", "config": {}})
        with httpx.Client(base_url=url, timeout=10) as client:

            def with_httpx(events: list[dict[str, Any]]) -> None:
                body = orjson.dumps({"events": events})
                client.post(
                    "/api/runs/cost/events", content=body, headers={"content-type": "application/json"}
                )

            for name, send, first in (
                ("trainpilot (http.client)", lambda e: ours.send("cost", e), 0),
                ("httpx", with_httpx, 10**6),
            ):
                cpu, wall = timed(send, batches, first)
                print(f"{name:26} {cpu:7.0f} µs CPU per batch, {wall:7.0f} µs wall", flush=True)
        ours.close()


if __name__ == "__main__":
    main()
