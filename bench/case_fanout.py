"""Case 4, live latency and fan-out: `run.log()` -> every SSE / WebSocket subscriber, next to the floor.

Three processes per measuring point, all real sockets on loopback: the server (`trainpilot serve`,
SQLite store, or the raw asyncio floor of bench/fanout_worker.py), one client process holding N
subscribers (bench/fanout_worker.py, the same parsing code for both), and this process, which
logs through the SDK at a fixed rate (the training process) or tells the floor to write. Each
point reports what every healthy subscriber received (lost must be 0), how many were cut off,
what was persisted, and the server's CPU and RSS. Then the rate is stepped up at one size until
an event is lost, a subscriber is cut off or p99 passes 1 s: the highest rate sustained.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import plots
import psutil
from common import save
from served import served

import trainpilot

WORKER = Path(__file__).resolve().parent / "fanout_worker.py"
RATE = 20.0  # events/s, the live rate
TARGET_SIZES = (100, 1000, 5000)  # where the 2x-the-floor target applies
TARGET_RSS_MB, RSS_AT = 150.0, 5000
MAX_P99_MS = 1000.0  # past this a rate is not "sustained"
GRACE_S = 10.0  # an event not received this long after the last log() is lost
LADDER_GRACE_S = 2.0  # stepping the rate up: later than this is past the 1 s p99 anyway
WARMUP = 3  # events before each point, not measured: connections and caches warm up


class System(Protocol):
    """Something that fans events out: trainpilot behind its SDK, or the raw floor."""

    name: str
    port: int
    pid: int
    run_id: str

    def emit(self, n: int, rate: float) -> None: ...

    def reset(self) -> None: ...

    def persisted(self) -> int | None: ...


class Trainpilot:
    name = "trainpilot"

    def __init__(self, url: str, pid: int, data_dir: str) -> None:
        self.url, self.pid = url, pid
        self.port = int(url.rsplit(":", 1)[1])
        self.run = trainpilot.init(project="bench", server=url, data_dir=data_dir, control=False)
        self.run_id = self.run.id
        self.step = 0
        self.http = httpx.Client(timeout=60)  # one client: each new one builds an SSL context (~80 ms)

    def emit(self, n: int, rate: float) -> None:
        """Log n metrics events at `rate` from this thread, as a training loop would."""
        start = time.perf_counter()
        for i in range(n):
            self.run.log({"train/loss": 1.0 / (self.step + 1), "lr": 0.1}, step=self.step)
            self.step += 1
            delay = start + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def reset(self) -> None:
        pass

    def persisted(self) -> int | None:
        params = {"run_id": self.run_id, "keys": "train/loss", "max_points": 2}
        body = self.http.get(f"{self.url}/api/metrics/history", params=params).json()
        return int(body["series"]["train/loss"]["total"])


class Floor:
    name = "floor"

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.pid = process.pid
        self.port = int(self.answer("PORT").split()[1])
        self.run_id = "r-00000000"
        self.step = 0

    def answer(self, word: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"floor server: expected {word}, got {line!r}")
        return line

    def command(self, line: str, word: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.answer(word)

    def emit(self, n: int, rate: float) -> None:
        self.command(f"emit {n} {rate}", "EMITTED")

    def reset(self) -> None:
        self.command("reset", "RESET")

    def persisted(self) -> int | None:
        return None  # the floor stores nothing


@contextlib.contextmanager
def started(name: str, folder: str) -> Iterator[System]:
    """A fresh server per (system, transport): its RSS belongs to that transport's load alone."""
    if name == "trainpilot":
        with served(folder) as (url, process):
            system = Trainpilot(url, process.pid, os.path.join(folder, "client"))
            try:
                yield system
            finally:
                system.run.finish(timeout=30)
                system.http.close()
        return
    command = [sys.executable, str(WORKER), "floor"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield Floor(process)
    finally:
        process.terminate()
        process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


class Subscribers:
    """The client process holding N subscribers; see bench/fanout_worker.py for its commands."""

    def __init__(self, system: System, transport: str, n: int) -> None:
        command = [sys.executable, str(WORKER), "client", "--port", str(system.port)]
        command += ["--transport", transport, "--subscribers", str(n), "--run-id", system.run_id]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.answer("READY"))

    def answer(self, word: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"subscriber client: expected {word}, got {line!r}")
        return line[len(word) :].strip()

    def command(self, line: str, word: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.answer(word)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command("quit", "")
        self.process.wait(30)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


def phase(system: System, subs: Subscribers, n: int, rate: float, grace_s: float) -> dict[str, Any]:
    """Emit n events at `rate`; what the subscribers got within `grace_s` after, and the server's cost."""
    server, client = psutil.Process(system.pid), psutil.Process(subs.process.pid)
    before = system.persisted()
    subs.command("mark", "MARKED")
    server.cpu_percent(None)
    client.cpu_percent(None)
    started_at, wall = time.perf_counter(), time.time()
    system.emit(n, rate)
    emitted_s = time.perf_counter() - started_at
    result: dict[str, Any] = json.loads(subs.command(f"wait {n} {grace_s}", "RESULT"))
    delivered_s = max(result.pop("last_receipt") - wall, emitted_s)
    after = system.persisted()
    return {
        **result,
        "rate": rate,
        "grace_s": grace_s,
        "emit_rate": round(n / emitted_s, 1),
        "delivered_rate": round(n / delivered_s, 1),
        "persisted": None if after is None or before is None else after - before,
        "server_cpu_percent": round(server.cpu_percent(None), 1),
        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        # what its child processes (trainpilot's analysis process) add: pages no other process maps
        "children_uss_mb": round(sum(c.memory_full_info().uss for c in server.children(True)) / 2**20, 1),
        "client_cpu_percent": round(client.cpu_percent(None), 1),
    }


def kept_pace(row: dict[str, Any]) -> bool:
    """The producer logged (trainpilot) or wrote (the floor) at 90% of the asked rate or better."""
    return bool(row["emit_rate"] >= 0.9 * row["rate"])


def sustained(row: dict[str, Any]) -> bool:
    """Nothing lost or late, nobody cut off, p99 within 1 s, and the producer kept the pace."""
    p99 = row["p99_ms"]
    return (
        row["lost"] == 0
        and row["unhealthy"] == 0
        and p99 is not None
        and p99 <= MAX_P99_MS
        and kept_pace(row)
    )


def point(
    system: System, transport: str, n: int, phases: list[tuple[float, int]], grace_s: float
) -> list[dict[str, Any]]:
    """One client of n subscribers; each phase (rate, events) measured apart; stop at the first miss.

    An event not received `grace_s` after the last one was emitted counts as lost.
    """
    system.reset()
    subs = Subscribers(system, transport, n)
    rows = []
    try:
        phase(system, subs, WARMUP, RATE, GRACE_S)
        for rate, events in phases:
            row = {
                "system": system.name,
                "transport": transport,
                **phase(system, subs, events, rate, grace_s),
            }
            rows.append(row)
            print(progress(row), flush=True)
            if not sustained(row):
                break
    finally:
        subs.close()
    return rows


def progress(row: dict[str, Any]) -> str:
    persisted = "" if row["persisted"] is None else f"  persisted {row['persisted']}/{row['events']}"
    if row["failed_to_open"]:
        persisted += f"  FAILED TO OPEN {row['failed_to_open']}: {row['failures']}"
    return (
        f"  {row['system']:10} {row['transport']:3} {row['subscribers']:5} subs {row['rate']:6.0f} ev/s  "
        f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  max {row['max_ms']} ms  "
        f"lost {row['lost']}  cut {row['unhealthy']}  server cpu {row['server_cpu_percent']}% "
        f"rss {row['server_rss_mb']} MB{persisted}"
    )


def run(quick: bool) -> Path:
    sizes = [1, 100] if quick else [1, 100, 1000, 5000]
    # p99 of 300 events is the third slowest event: of 120 (6 s) it was the second, and one stray slow
    # event (a stall elsewhere on the machine, every subscriber late) moved the row's verdict
    seconds = 0.5 if quick else 15.0
    ladder_size = 100 if quick else 1000
    ladder = [1000.0] if quick else [300.0, 1000.0, 3000.0]
    ladder_seconds = 0.5 if quick else 2.0
    points, ladders, footprint = [], [], []
    # each floor right after trainpilot on the same transport: the machine's speed drifts over minutes
    for transport in ("sse", "ws"):
        for name in ("trainpilot", "floor"):
            with tempfile.TemporaryDirectory(prefix="tp-fanout-") as folder, started(name, folder) as system:
                idle_mb = round(psutil.Process(system.pid).memory_info().rss / 2**20, 1)
                first = len(points)
                for n in sizes:
                    points += point(system, transport, n, [(RATE, int(RATE * seconds))], GRACE_S)
                steps = [(rate, int(rate * ladder_seconds)) for rate in ladder]
                ladders += point(system, transport, ladder_size, steps, LADDER_GRACE_S)
                by_size = {str(r["subscribers"]): r["server_rss_mb"] for r in points[first:]}
                footprint.append(
                    {"system": name, "transport": transport, "idle_mb": idle_mb, "rss_mb": by_size}
                )
    body = {
        "quick": quick,
        "rate": RATE,
        "seconds": seconds,
        "sizes": sizes,
        "points": points,
        "ladder_size": ladder_size,
        "ladder_seconds": ladder_seconds,
        "ladder": ladders,
        "server_rss": footprint,  # case 6 quotes it: the server's RSS idle and under each load
    }
    return save("fanout", body)


# -- the report -------------------------------------------------------------------------------------


def rows_of(points: list[dict[str, Any]], system: str, transport: str) -> dict[int, dict[str, Any]]:
    return {r["subscribers"]: r for r in points if r["system"] == system and r["transport"] == transport}


def verdicts(result: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against this run's own floor (each transport against its own)."""
    points, out = result["points"], []
    for transport in ("sse", "ws"):
        ours, floor = rows_of(points, "trainpilot", transport), rows_of(points, "floor", transport)
        for n in TARGET_SIZES:
            if n not in ours or n not in floor or ours[n]["p99_ms"] is None or not floor[n]["p99_ms"]:
                continue
            p99, floor99 = ours[n]["p99_ms"], floor[n]["p99_ms"]
            if not kept_pace(floor[n]):
                out.append(
                    f"{transport.upper()} at {n:,} subscribers: p99 {p99:.1f} ms; not judged: the floor "
                    f"wrote only {floor[n]['emit_rate']:.1f} of {floor[n]['rate']:.0f} events/s on this run"
                )
                continue
            ratio = p99 / floor99
            out.append(
                f"{transport.upper()} at {n:,} subscribers: p99 {p99:.1f} ms = {ratio:.1f}x the "
                f"floor's {floor99:.1f} ms (target <= 2x): {'met' if ratio <= 2 else 'NOT met'}"
            )
        if RSS_AT in ours:
            rss, child = ours[RSS_AT]["server_rss_mb"], ours[RSS_AT].get("children_uss_mb", 0.0)
            verdict = "met" if rss + child <= TARGET_RSS_MB else "NOT met"
            out.append(
                f"{transport.upper()} server RSS at {RSS_AT:,} subscribers: {rss + child:.0f} MB, the server "
                f"process's {rss:.0f} and its analysis process's own (USS) {child:.0f} "
                f"(target <= {TARGET_RSS_MB:.0f} MB): {verdict}"
            )
    live = [r for r in points if r["system"] == "trainpilot"]
    lost = sum(r["lost"] for r in live)
    cut = sum(r["unhealthy"] for r in live)
    verdict = "met" if lost == 0 and cut == 0 else "NOT met"
    out.append(
        f"events lost by healthy subscribers at {result['rate']:.0f} events/s: {lost:,} (target 0), "
        f"subscribers cut off or failed: {cut:,}: {verdict}"
    )
    return out


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def section(result: dict[str, Any]) -> list[str]:
    points = result["points"]
    lines = [
        "## 4. Live latency and fan-out: `run.log()` -> every subscriber",
        "",
        f"{result['rate']:.0f} events/s for {result['seconds']:.0f} s per point, logged through the SDK "
        "by a separate training process to `trainpilot serve` (SQLite store), received by N raw SSE "
        "or WebSocket subscribers held by one client process; latency is the receipt time minus the "
        f"event's `ts` at `log()`, recorded at up to 200 evenly spread subscribers (every subscriber's "
        "events are counted). The floor: a raw asyncio server (uvloop, as uvicorn uses) writing the "
        "same bytes with a fresh `ts` to every socket with plain `writer.write`, read by the same "
        "client; it skips the SDK, the HTTP ingest and the store, so the ratio is the whole path's "
        "cost against fan-out alone. CPU is the server process's (100% = one core) over the point, "
        "RSS at its end (+ analysis: what trainpilot's analysis process adds, its USS); a fresh server per "
        "transport. A floor that could not write at the asked rate "
        "(its own process, sharing the cores) is shown with the rate it managed and not judged. "
        f"Lost: not received {GRACE_S:g} s after the last `log()` by a subscriber that was not cut off.",
        "",
        "| transport | subscribers | p50 ms | p99 ms | max ms | floor p99 ms | p99 / floor "
        "| lost | cut off | persisted | server CPU % | server RSS MB | + analysis MB "
        "| floor CPU % | floor RSS MB |",
        "|" + " --- |" + " ---: |" * 14,
    ]
    for transport in ("sse", "ws"):
        ours, floor = rows_of(points, "trainpilot", transport), rows_of(points, "floor", transport)
        for n, r in sorted(ours.items()):
            f = floor.get(n, {})
            ratio = f"{r['p99_ms'] / f['p99_ms']:.1f}x" if r["p99_ms"] and f.get("p99_ms") else "—"
            floor99 = ms(f.get("p99_ms"))
            if f and not kept_pace(f):
                floor99 += f" (wrote {f['emit_rate']:.1f} events/s)"
                ratio = f"({ratio})"
            lines.append(
                f"| {transport.upper()} | {n:,} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {ms(r['max_ms'])} "
                f"| {floor99} | {ratio} | {r['lost']:,} | {r['unhealthy']:,} "
                f"| {r['persisted']:,} / {r['events']:,} | {r['server_cpu_percent']:.0f} "
                f"| {r['server_rss_mb']:.0f} | {r.get('children_uss_mb', 0):.0f} "
                f"| {f.get('server_cpu_percent', 0):.0f} "
                f"| {f.get('server_rss_mb', 0):.0f} |"
            )
    lines += ["", "Targets (issue 10), checked against this run's own floor:", ""]
    lines += [f"- {v}" for v in verdicts(result)]
    lines += ["", *ladder_lines(result), "", *growth_lines(points), ""]
    return lines


def ladder_lines(result: dict[str, Any]) -> list[str]:
    ladder = result["ladder"]
    lines = [
        f"**Highest rate sustained** at {result['ladder_size']:,} subscribers: the rate stepped up "
        f"({result['ladder_seconds']:g} s a step) until an event is lost, a subscriber is cut off or "
        f"p99 passes {MAX_P99_MS:.0f} ms. The floor writes each event on its own (no coalescing), "
        "trainpilot coalesces what queued into one write per subscriber.",
        "",
        "| system | transport | events/s asked | delivered events/s (first log to last receipt) "
        f"| p50 ms | p99 ms | late or lost (> {LADDER_GRACE_S:g} s) | cut off | server CPU % | sustained |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in ladder:
        lines.append(
            f"| {r['system']} | {r['transport'].upper()} | {r['rate']:,.0f} | {r['delivered_rate']:,.0f} "
            f"| {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {r['lost']:,} | {r['unhealthy']:,} "
            f"| {r['server_cpu_percent']:.0f} | {'yes' if sustained(r) else 'no'} |"
        )
    best = {}
    for r in ladder:
        if sustained(r):
            key = f"{r['system']} {r['transport'].upper()}"
            best[key] = max(best.get(key, 0.0), r["rate"])
    if best:
        lines += [
            "",
            "Highest step sustained: " + ", ".join(f"{k} {v:,.0f} events/s" for k, v in best.items()),
        ]
    return lines


def growth_lines(points: list[dict[str, Any]]) -> list[str]:
    series: dict[str, dict[str, list[tuple[float, float]]]] = {"p99_ms": {}, "server_cpu_percent": {}}
    for r in points:
        label = f"{r['system']} {r['transport'].upper()}"
        for field, by_label in series.items():
            if r[field] is not None:
                by_label.setdefault(label, []).append((r["subscribers"], r[field]))
    latency = plots.growth(
        "bench_fanout_p99",
        "log() -> subscriber p99 against subscribers",
        "subscribers",
        "p99 ms",
        series["p99_ms"],
    )
    cpu = plots.growth(
        "bench_fanout_cpu",
        "server CPU against subscribers",
        "subscribers",
        "server CPU % (one core = 100)",
        series["server_cpu_percent"],
    )
    return [f"![p99 against subscribers]({latency})", "", f"![server CPU against subscribers]({cpu})"]


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
