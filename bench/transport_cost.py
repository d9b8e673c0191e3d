"""What one batch costs the training process to send: the SDK's transport (sdk/http1.py, one kept-alive
connection) next to the standard library's `http.client` and httpx on kept-alive connections, against a
real `trainpilot serve`, CPU of the sending thread and wall time.

    python bench/transport_cost.py [BATCHES]

Each batch is one event of the reference trainer's size (15 metrics), as a 2-ms training step sends.
This process runs on core 0 and the server on core 1 where the machine has two, so the sender's CPU is
not mixed with the server's; three rounds, each transport in turn.
"""

from __future__ import annotations

import http.client
import os
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
    apart = (os.cpu_count() or 1) >= 2
    if apart:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as folder, served(folder, cpus={1} if apart else None) as (url, _):
        ours = HttpTransport(url)
        ours.create_run({"id": "cost", "project": "bench", "name": "cost", "config": {}})
        stdlib = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        json_type = {"content-type": "application/json"}

        def with_stdlib(events: list[dict[str, Any]]) -> None:
            stdlib.request(
                "POST", "/api/runs/cost/events", body=orjson.dumps({"events": events}), headers=json_type
            )
            stdlib.getresponse().read()

        with httpx.Client(base_url=url, timeout=10) as client:

            def with_httpx(events: list[dict[str, Any]]) -> None:
                client.post(
                    "/api/runs/cost/events", content=orjson.dumps({"events": events}), headers=json_type
                )

            for round_ in range(3):
                for offset, (name, send) in enumerate(
                    (
                        ("trainpilot (sdk/http1.py)", lambda e: ours.send("cost", e)),
                        ("http.client", with_stdlib),
                        ("httpx", with_httpx),
                    )
                ):
                    cpu, wall = timed(send, batches, (round_ * 3 + offset) * 10**6)
                    print(f"{name:26} {cpu:7.0f} µs CPU per batch, {wall:7.0f} µs wall", flush=True)
        stdlib.close()
        ours.close()


if __name__ == "__main__":
    main()
