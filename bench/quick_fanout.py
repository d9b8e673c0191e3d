"""Quick check: how many SSE subscribers one server holds, and log() -> subscriber latency.

Starts `trainpilot serve` in its own process, opens N raw SSE connections from one asyncio client
process, logs metrics through the SDK at a fixed rate, and reports per-event latency (SDK `ts` at
log() -> receipt at each subscriber), events lost, and the server's RSS. The proper benchmark
suite (issue 10) supersedes this; this is the figure quoted in the core issue's closing note.

    python bench/quick_fanout.py --subscribers 1000 --rate 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import threading
import time

import psutil
from served import served

import trainpilot

FRAME = re.compile(rb'"ts":([0-9.]+)')


async def subscriber(
    port: int,
    run_id: str,
    latencies: list[float],
    counts: list[int],
    index: int,
    ready: asyncio.Event,
    opened: list[int],
    total: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /api/stream/metrics?run_id={run_id}&kinds=metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    opened[0] += 1
    if opened[0] == total:
        ready.set()
    while True:
        chunk = await reader.read(1 << 16)
        if not chunk:
            return
        now = time.time()
        for match in FRAME.finditer(chunk):
            latencies.append(now - float(match.group(1)))
            counts[index] += 1


async def main_async(args: argparse.Namespace, url: str, server_pid: int) -> dict[str, float]:
    port = int(url.rsplit(":", 1)[1])
    run = trainpilot.init(project="bench", server=url, data_dir=args.data_dir)
    latencies: list[float] = []
    counts = [0] * args.subscribers
    ready = asyncio.Event()
    opened = [0]
    tasks = [
        asyncio.create_task(subscriber(port, run.id, latencies, counts, i, ready, opened, args.subscribers))
        for i in range(args.subscribers)
    ]
    await asyncio.wait_for(ready.wait(), 120)
    proc = psutil.Process(server_pid)
    proc.cpu_percent(None)
    sent = int(args.rate * args.seconds)

    def produce() -> None:
        start = time.perf_counter()
        for i in range(sent):
            run.log({"train/loss": 1.0 / (i + 1), "lr": 0.1}, step=i)
            delay = start + (i + 1) / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    thread = threading.Thread(target=produce)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    cpu = proc.cpu_percent(None)
    rss = proc.memory_info().rss
    run.finish()
    for t in tasks:
        t.cancel()
    latencies.sort()
    n = len(latencies)
    return {
        "subscribers": args.subscribers,
        "events_sent": sent,
        "deliveries": n,
        "lost": sent * args.subscribers - n,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[int(n * 0.99)],
        "max_ms": 1000 * latencies[-1],
        "server_cpu_percent": cpu,
        "server_rss_mb": rss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="tp-fanout-")
    args.data_dir = os.path.join(tmp, "client")
    with served(tmp) as (url, server):
        result = asyncio.run(main_async(args, url, server.pid))
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
