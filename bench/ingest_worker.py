"""One load process of case 3: writes metric batches into a running server as fast as it acknowledges.

Each run is one connection with one request in flight, as the SDK's sender does; a process drives
several runs on one asyncio loop. Batches are encoded before the start signal so the window
measures the server, not the client's JSON. Every batch has fresh `seq`s (nothing is a duplicate),
and a batch counts only once the server answers that it stored every event in it.

    python bench/ingest_worker.py --url http://127.0.0.1:8765 --transport rest --runs a,b \
        --events 1000 --seconds 3 --max-points 1000000

Prints ``READY`` once encoded, then reads from stdin the wall time to start at (so every load
process starts together), then prints ``RESULT {json}``: per-request round trips (ns), points
acknowledged, first send and last answer (wall time), its CPU seconds, and how many runs used up
their encoded batches before the time was up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.client import connect

METRICS = 8  # scalars per event: a point is one scalar
# What a healthy run logs every step (no validation metrics, which come once an epoch), so the
# server's live analysis runs on every event as it would in use, without an insight per step.
NAMES = [
    "train/loss",
    "train/acc",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_s",
    "sys/gpu_util",
    "sys/gpu_mem_gb",
    "sys/cpu_percent",
]
EVENT = (
    b'{"seq":%d,"step":%d,"ts":%.6f,"data":{' + b",".join(b'"%s":%%.6g' % n.encode() for n in NAMES) + b"}}"
)


def values(step: int) -> tuple[float, ...]:
    """The 8 metrics at `step`: a loss falling slowly with a little noise, steady system figures."""
    loss = 2.0 / (1 + step * 1e-4) + 0.1 + 0.01 * ((step * 7919) % 13 - 6) / 6
    return (
        loss,
        1 - loss / 2.2,
        3e-4,
        1.0 + 0.01 * (step % 11),
        1000.0 + step % 13,
        90.0 + step % 5,
        40.0,
        50.0,
    )


MLFLOW_METRIC = b'{"key":"%s","value":%%.6g,"timestamp":%%d,"step":%%d}'
MLFLOW_METRICS = [MLFLOW_METRIC % n.encode() for n in NAMES]


def encode_batches(events: int, count: int, ts: float) -> list[bytes]:
    """`count` JSON event lists of `events` events of 8 metrics each, seqs and steps running on."""
    out = []
    for b in range(count):
        first = b * events
        items = [EVENT % (s, s, ts, *values(s)) for s in range(first, first + events)]
        out.append(b"[" + b",".join(items) + b"]")
    return out


def encode_mlflow_batches(events: int, count: int, ts: float) -> list[bytes]:
    """The same steps as MLflow `log-batch` metric lists (one entry per scalar, at most 1000)."""
    ms = int(ts * 1000)
    out = []
    for b in range(count):
        first = b * events
        items = [
            m % (v, ms, s)
            for s in range(first, first + events)
            for m, v in zip(MLFLOW_METRICS, values(s), strict=True)
        ]
        out.append(b"[" + b",".join(items) + b"]")
    return out


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = 0.0  # set from stdin once every load process is ready
        self.deadline = 0.0
        self.round_trips: list[int] = []
        self.points = 0
        self.errors: list[str] = []
        self.exhausted = 0
        self.first = float("inf")
        self.last = 0.0

    def done(self, started_ns: int, stored: int) -> None:
        self.round_trips.append(time.perf_counter_ns() - started_ns)
        self.points += stored * METRICS
        self.last = time.time()

    async def rest(self, run_id: str, batches: list[bytes]) -> None:
        await self.http(run_id, batches, f"/api/runs/{run_id}/events", b'{"events":')

    async def mlflow(self, run_id: str, batches: list[bytes]) -> None:
        prefix = b'{"run_id":"%s","metrics":' % run_id.encode()
        await self.http(run_id, batches, "/api/2.0/mlflow/runs/log-batch", prefix)

    async def http(self, run_id: str, batches: list[bytes], path: str, prefix: bytes) -> None:
        """POST each batch on one keep-alive connection, the next once the last is answered."""
        host, port = self.args.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        await self.wait_for_start()
        for events in batches:
            if time.time() >= self.deadline:
                break
            body = prefix + events + b"}"
            started = time.perf_counter_ns()
            self.first = min(self.first, time.time())
            writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            length = int(status_and_headers.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            answer = await reader.readexactly(length)
            if not status_and_headers.startswith(b"HTTP/1.1 200"):
                self.errors.append(f"{run_id}: {status_and_headers[:40]!r} {answer[:200]!r}")
                break
            # MLflow answers {} once its transaction committed: the whole batch was stored.
            stored = orjson.loads(answer).get("stored", self.args.events)
            self.done(started, stored)
        else:
            self.exhausted += 1
        writer.close()

    async def ws(self, run_id: str, batches: list[bytes]) -> None:
        url = "ws://" + self.args.url.removeprefix("http://") + "/api/ws"
        prefix = b'{"op":"ingest","run_id":"%s","events":' % run_id.encode()
        async with connect(url, max_size=None, compression=None) as socket:
            await self.wait_for_start()
            for events in batches:
                if time.time() >= self.deadline:
                    break
                started = time.perf_counter_ns()
                self.first = min(self.first, time.time())
                await socket.send((prefix + events + b"}").decode())
                answer = orjson.loads(await socket.recv())
                if answer.get("op") != "ingested":
                    self.errors.append(f"{run_id}: {str(answer)[:200]}")
                    break
                self.done(started, answer["stored"])
            else:
                self.exhausted += 1

    async def wait_for_start(self) -> None:
        await asyncio.sleep(max(0.0, self.start - time.time()))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = args.runs.split(",")
    points_per_batch = args.events * METRICS
    per_run = max(2, args.max_points // points_per_batch // len(runs))
    encode = encode_mlflow_batches if args.transport == "mlflow" else encode_batches
    batches = encode(args.events, per_run, time.time())
    load = Load(args)
    print("READY", flush=True)
    load.start = float(sys.stdin.readline())
    cpu = time.process_time()
    load.deadline = load.start + args.seconds
    drive = {"rest": load.rest, "ws": load.ws, "mlflow": load.mlflow}[args.transport]
    await asyncio.gather(*(drive(run_id, batches) for run_id in runs))
    return {
        "cpu_s": time.process_time() - cpu,
        "round_trips_ns": load.round_trips,
        "points": load.points,
        "first": load.first,
        "last": load.last,
        "exhausted": load.exhausted,
        "errors": load.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--transport", choices=["rest", "ws", "mlflow"], required=True)
    parser.add_argument("--runs", required=True, help="comma-separated run ids, created beforehand")
    parser.add_argument("--events", type=int, required=True, help="events (of 8 metrics) per batch")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--max-points", type=int, required=True, help="points to encode, all runs together")
    args = parser.parse_args()
    print("RESULT " + json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
