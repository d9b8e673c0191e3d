"""Case 4's two helper processes: the subscribers' client, and the raw asyncio floor server.

`client` opens N raw SSE or WebSocket connections (no client library: the same parsing code reads
trainpilot and the floor), then obeys one command a line on stdin and answers on stdout:

    mark                  start a measuring phase: forget latencies and per-subscriber counts
    wait <n> <timeout_s>  wait until every healthy subscriber has <n> events of this phase, then
                          print RESULT {...}: deliveries, lost, unhealthy, latency p50/p99/max
    quit

Latency is receipt wall time minus the event's `ts` (the client's wall time at `run.log()`, or
at the floor's write), recorded at up to 200 evenly spread subscribers; every subscriber's events
are counted. Sockets are read with asyncio Protocol callbacks, not streams: at 5000 subscribers a
stream-based client spent more CPU reading than the floor spent writing. A subscriber cut off
(`resync`, closed) is unhealthy and counted apart.

`floor` is the raw fan-out floor: an asyncio server that accepts the same connections and, on
`emit <n> <rate>`, writes each event's bytes (the same SSE frame in HTTP chunked encoding, or the
same WebSocket text frame, with a fresh `ts`) to every socket with plain `writer.write`.

    python fanout_worker.py client --port P --transport sse --subscribers 1000 [--run-id R]
    python fanout_worker.py floor --run-id R      # prints PORT <p>, then obeys emit / quit
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import resource
import sys
import time
from typing import Any

import orjson

# An event's JSON, in an SSE frame or in a WebSocket {"op":"events","events":[...]} message.
EVENT = re.compile(rb'\{"id":(\d+),[^\n]*?"ts":([0-9.eE+-]+)')
SAMPLED = 200  # subscribers whose every event's latency is recorded, evenly spread
WS_KEY = base64.b64encode(b"trainpilot-bench").decode()  # 16 bytes, as RFC 6455 asks
WS_GUID = b"258EAFA5-E914-47CA-95CA-C5AB0DC11B65"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fast_loop() -> None:
    """uvloop when installed: uvicorn runs trainpilot on it, so the floor and the client use it too."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (the zero mask: the server must unmask, the bytes stay readable)."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
    return head + b"\0\0\0\0" + payload


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 1 << 16:
        return bytes([0x81, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + n.to_bytes(8, "big") + payload


# -- the subscribers' client ---------------------------------------------------------------------


class Subscriber:
    __slots__ = ("count", "healthy", "last_id", "reordered", "sampled")

    def __init__(self, sampled: bool) -> None:
        self.sampled = sampled  # its latencies are recorded; the others' events are only counted
        self.count = 0
        self.last_id = 0
        self.reordered = 0  # an id not above the last one: a duplicate or out of order
        self.healthy = True


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        every = max(1, args.subscribers // SAMPLED)
        self.subs = [Subscriber(i % every == 0) for i in range(args.subscribers)]
        self.latencies: list[float] = []
        self.opened = 0
        self.last_receipt = 0.0  # wall time of the phase's latest receipt, at any subscriber
        self.failed: list[str] = []

    def receive(self, sub: Subscriber, data: bytes) -> None:
        self.last_receipt = time.time()
        if not sub.sampled:
            sub.count += data.count(b'{"id":')
            if b"resync" in data:
                sub.healthy = False
            return
        now = time.time()
        for match in EVENT.finditer(data):
            event_id = int(match.group(1))
            if event_id <= sub.last_id:
                sub.reordered += 1
            sub.last_id = event_id
            sub.count += 1
            self.latencies.append(now - float(match.group(2)))
        if b"resync" in data:
            sub.healthy = False

    async def subscribe(self, sub: Subscriber, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        proto = SseStream if self.args.transport == "sse" else WsStream
        try:
            async with gate:
                _, stream = await loop.create_connection(
                    lambda: proto(self, sub), "127.0.0.1", self.args.port
                )
                await asyncio.wait_for(stream.ready, 60)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.failed.append(repr(exc))
            sub.healthy = False
            return
        self.opened += 1

    async def wait(self, n: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.count >= n for s in self.subs if s.healthy):
                break
            await asyncio.sleep(0.05)
        healthy = [s for s in self.subs if s.healthy]
        lat = sorted(self.latencies)
        k = len(lat)

        def ms(i: int) -> float | None:
            return round(1000 * lat[i], 3) if k else None

        return {
            "subscribers": len(self.subs),
            "opened": self.opened,
            "failed_to_open": len(self.failed),
            "failures": self.failed[:3],
            "events": n,
            "last_receipt": self.last_receipt,
            "deliveries": sum(s.count for s in self.subs),
            "healthy": len(healthy),
            "unhealthy": len(self.subs) - len(healthy),
            "lost": sum(max(0, n - s.count) for s in healthy),
            "reordered": sum(s.reordered for s in self.subs),
            "sampled_subscribers": sum(s.sampled for s in self.subs),
            "latency_samples": k,
            "p50_ms": ms(k // 2),
            "p99_ms": ms(min(k - 1, int(k * 0.99))),
            "max_ms": ms(k - 1),
        }

    async def main(self) -> None:
        gate = asyncio.Semaphore(200)  # connect in waves: the listen backlog is finite
        tasks = [asyncio.create_task(self.subscribe(s, gate)) for s in self.subs]
        while self.opened + len(self.failed) < len(self.subs):
            await asyncio.sleep(0.02)
        print("READY " + json.dumps({"opened": self.opened, "failed": len(self.failed)}), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            command = line.split()
            if command[0] == "mark":
                self.latencies = []
                for s in self.subs:
                    s.count = 0
                print("MARKED", flush=True)
            elif command[0] == "wait":
                result = await self.wait(int(command[1]), float(command[2]))
                print("RESULT " + json.dumps(result), flush=True)
            elif command[0] == "quit":
                break
        for t in tasks:
            t.cancel()


class SseStream(asyncio.Protocol):
    """One SSE subscriber, read with callbacks (no stream objects: the client must stay cheap)."""

    def __init__(self, client: Client, sub: Subscriber) -> None:
        self.client, self.sub = client, sub
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending = b""
        self.headed = False  # the response's status line and headers are read

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request())

    def request(self) -> bytes:
        query = f"run_id={self.client.args.run_id}&kinds=metrics"
        return f"GET /api/stream/metrics?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def data_received(self, data: bytes) -> None:
        data = self.pending + data if self.pending else data
        if not self.headed:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                self.pending = data
                return
            self.headed = True
            if not self.accepted(head.split(b"\r\n", 1)[0]):
                return
            data = rest
        self.pending = self.consume(data)

    def accepted(self, status: bytes) -> bool:
        if b" 200 " in status or b" 101 " in status:
            self.opened()
            return True
        self.ready.set_exception(ConnectionError(status.decode("latin-1")))
        self.transport.close()
        return False

    def opened(self) -> None:
        self.ready.set_result(None)

    def consume(self, data: bytes) -> bytes:
        """Hand on the complete frames; return the incomplete tail."""
        end = data.rfind(b"\n\n") + 2
        if end >= 2:
            self.client.receive(self.sub, data[:end])
            return data[end:]
        return data

    def connection_lost(self, exc: Exception | None) -> None:
        self.sub.healthy = False  # the stream ended: whatever the reason, not a healthy subscriber
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the stream started: {exc!r}"))


class WsStream(SseStream):
    """One WebSocket subscriber: the handshake, `subscribe`, then text frames (pings answered)."""

    def request(self) -> bytes:
        return (
            b"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % WS_KEY.encode()
        )

    def opened(self) -> None:
        subscribe = {"op": "subscribe", "run_id": self.client.args.run_id, "kinds": ["metrics"]}
        self.transport.write(client_frame(1, orjson.dumps(subscribe)))

    def consume(self, data: bytes) -> bytes:
        while len(data) >= 2:
            n, at = data[1] & 0x7F, 2
            if n >= 126:
                at = 4 if n == 126 else 10
                if len(data) < at:
                    break
                n = int.from_bytes(data[2:at], "big")
            if len(data) < at + n:
                break
            opcode, payload, data = data[0] & 0x0F, data[at : at + n], data[at + n :]
            if opcode == 9:
                self.transport.write(client_frame(10, payload))
            elif opcode in (0, 1) and self.ready.done():
                self.client.receive(self.sub, payload)
            elif opcode == 1 and b'"subscribed"' in payload:
                self.ready.set_result(None)
        return data


# -- the floor: raw asyncio fan-out of the same bytes ----------------------------------------------


class Floor:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.sse: list[asyncio.StreamWriter] = []
        self.ws: list[asyncio.StreamWriter] = []
        self.next_id = 1
        self.seq0 = time.time_ns() // 1000  # the SDK's seqs are this large: the same bytes on the wire

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        key = re.search(rb"(?i)sec-websocket-key: *([^\r]+)", head)
        if key is None:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                + chunk(b"retry: 2000\n: connected\n\n")
            )
            self.sse.append(writer)
            return
        accept = base64.b64encode(hashlib.sha1(key.group(1).strip() + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept
        )
        writer.write(server_frame(b'{"op":"subscribed","after":0}'))
        self.ws.append(writer)

    def payload(self, step: int) -> bytes:
        """An event shaped and sized like trainpilot's, with a fresh `ts`."""
        event_id, self.next_id = self.next_id, self.next_id + 1
        event = {
            "id": event_id,
            "run_id": self.run_id,
            "seq": self.seq0 + step,
            "kind": "metrics",
            "ts": time.time(),
            "step": step,
            "data": {"train/loss": 1.0 / (step + 1), "lr": 0.1},
        }
        return orjson.dumps(event)

    def write_one(self, step: int) -> None:
        payload = self.payload(step)
        if self.sse:
            sse = chunk(b"id: %d\nevent: metrics\ndata: %s\n\n" % (self.next_id - 1, payload))
            for w in self.sse:
                w.write(sse)
        if self.ws:
            ws = server_frame(b'{"op":"events","events":[' + payload + b"]}")
            for w in self.ws:
                w.write(ws)

    async def emit(self, n: int, rate: float) -> None:
        start = time.perf_counter()
        for i in range(n):
            self.write_one(i)
            delay = start + (i + 1) / rate - time.perf_counter()
            await asyncio.sleep(max(delay, 0))

    async def main(self) -> None:
        server = await asyncio.start_server(self.accept, "127.0.0.1", 0, backlog=4096)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            command = line.split()
            if command[0] == "reset":  # a new measuring point: drop the last point's sockets
                for w in self.sse + self.ws:
                    w.close()
                self.sse, self.ws, self.next_id = [], [], 1
                print("RESET", flush=True)
            elif command[0] == "emit":
                await self.emit(int(command[1]), float(command[2]))
                print("EMITTED", flush=True)
            elif command[0] == "quit":
                break
        server.close()


def chunk(body: bytes) -> bytes:
    """HTTP/1.1 chunked encoding, as uvicorn writes each body message of a stream."""
    return b"%x\r\n%s\r\n" % (len(body), body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["client", "floor"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--run-id", default="r-00000000")
    args = parser.parse_args()
    raise_fd_limit()
    fast_loop()
    asyncio.run(Client(args).main() if args.role == "client" else Floor(args.run_id).main())


if __name__ == "__main__":
    main()
