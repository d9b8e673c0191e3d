"""Case 3, ingest: sustained points per second into one server, REST batches and WebSocket, with
the time from receipt to durable commit, next to the floors of the SQLite store underneath.

One `trainpilot serve` process (bench/served.py) with its embedded SQLite store; load comes from
separate processes (bench/ingest_worker.py), one connection per run, one batch in flight per
connection, as the SDK's sender does. A point is one scalar: an event of 8 metrics is 8 points.
Every figure counts only points the server acknowledged *and* that are found in the database
afterwards, read from the SQLite file itself. The server answers a batch only after the store
committed it (Hub.ingest), so the round trip a client measures bounds receipt → durable from above.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import ingest_mlflow
import ingest_worker
import orjson
import plots
import psutil
from common import cpu_seconds, family, save, summary_us
from served import served

from trainpilot.analysis import Analyzer
from trainpilot.broker import open_broker
from trainpilot.broker.subscriber import encoded
from trainpilot.events import Event, NewEvent
from trainpilot.server.analysts import metric_rows
from trainpilot.server.hub import Hub
from trainpilot.server.latency import quantile_bound_ms
from trainpilot.server.metrics_batch import decode_metrics
from trainpilot.settings import Settings
from trainpilot.store import chunks
from trainpilot.store.sqlite import SCHEMA, SQLiteStore, _connect
from trainpilot.wire import decode_batch

WORKER = Path(__file__).resolve().parent / "ingest_worker.py"
METRICS = ingest_worker.METRICS
TARGET_RATE, TARGET_P99_MS = 300_000, 50.0
LABELS = {"rest": "trainpilot REST", "ws": "trainpilot WebSocket", "mlflow": "MLflow REST log-batch"}
CEILING = 600_000  # points/s encoded ahead per point measured: above anything one server reaches


def measure(
    url: str,
    db: str,
    server_pid: int,
    transport: str,
    runs: int,
    events: int,
    seconds: float,
    clients: int,
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """Drive `runs` new trainpilot runs from `clients` load processes for `seconds`; read back what
    was stored."""
    tag = uuid.uuid4().hex[:6]
    run_ids = [f"ingest-{transport}-{events}x{runs}-{i}-{tag}" for i in range(runs)]
    with httpx.Client(base_url=url) as client:
        for run_id in run_ids:
            client.post("/api/runs", json={"id": run_id, "project": "bench-ingest"}).raise_for_status()
        before = client.get("/api/system/info").json()["ingest"]["counts"]
        row = drive(
            url,
            server_pid,
            transport,
            run_ids,
            events,
            seconds,
            clients,
            lambda: stored_points(db, run_ids),
            cpus,
        )
        after = client.get("/api/system/info").json()["ingest"]["counts"]
    return {**row, **server_latency([a - b for a, b in zip(after, before, strict=True)])}


def server_latency(counts: list[int]) -> dict[str, float | None]:
    """The server's own receipt -> durable time of this row's batches (its histogram's buckets: each
    figure is the upper bound of the bucket that holds the quantile)."""
    return {
        "server_p50_ms_at_most": quantile_bound_ms(counts, 0.5),
        "server_p99_ms_at_most": quantile_bound_ms(counts, 0.99),
    }


def drive(
    url: str | list[str],
    server_pid: int | list[int],
    transport: str,
    run_ids: list[str],
    events: int,
    seconds: float,
    clients: int,
    persisted_points: Callable[[], int],
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """The load processes against any server (or replicas: load processes go round the URLs); its CPU
    counts every process of it (MLflow's workers, every replica). `cpus` pins the load processes."""
    pin = None if cpus is None else lambda: os.sched_setaffinity(0, cpus)
    urls = [url] if isinstance(url, str) else url
    pids = [server_pid] if isinstance(server_pid, int) else server_pid
    runs = len(run_ids)
    clients = min(clients, runs)
    share = CEILING * seconds // clients
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--url",
                urls[c % len(urls)],
                "--transport",
                transport,
                "--runs",
                ",".join(run_ids[c::clients]),
                "--events",
                str(events),
                "--seconds",
                str(seconds),
                "--max-points",
                str(int(share)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=WORKER.parent,
            preexec_fn=pin,
        )
        for c in range(clients)
    ]
    for w in workers:
        assert w.stdout is not None and w.stdin is not None
        if w.stdout.readline().strip() != "READY":
            raise RuntimeError(f"load process {w.pid} failed before starting")
    start = time.time() + 0.3  # time to open every connection first
    for w in workers:
        assert w.stdin is not None
        w.stdin.write(f"{start}\n")
        w.stdin.flush()
    servers = [psutil.Process(pid) for pid in pids]
    processes = [p for pid in pids for p in family(pid)]
    time.sleep(max(0.0, start - time.time()))
    cpu_before, wall_before = cpu_seconds(processes), time.time()
    split_before = cpu_split(servers)
    psutil.cpu_percent(interval=None)  # the machine's, from here: other load shows in it
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=seconds + 120)
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if w.returncode != 0 or line is None:
            raise RuntimeError(f"load process exited {w.returncode}")
        results.append(json.loads(line[len("RESULT ") :]))
    server_cpu_s = cpu_seconds(processes) - cpu_before
    split = {k: v - split_before.get(k, 0.0) for k, v in cpu_split(servers).items()}
    server_cpu = server_cpu_s / (time.time() - wall_before)
    machine_cpu = psutil.cpu_percent(interval=None) * (os.cpu_count() or 1)
    window = max(r["last"] for r in results) - min(r["first"] for r in results)
    acked = sum(r["points"] for r in results)
    persisted = persisted_points()
    samples = [ns for r in results for ns in r["round_trips_ns"]]
    us = summary_us(samples) if samples else {"p50": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    return {
        "transport": transport,
        "runs": runs,
        "clients": clients,
        "events_per_batch": events,
        "points_per_batch": events * METRICS,
        "window_s": round(window, 3),
        "batches": len(samples),
        "points_acked": acked,
        "points_persisted": persisted,
        "points_per_s": min(acked, persisted) / window if window > 0 else 0.0,
        "round_trip_ms": {k: v / 1000 for k, v in us.items()},
        "server_cpu_percent": round(100 * server_cpu, 1),
        "server_cpu_us_per_point": server_cpu_s / max(acked, 1) * 1e6,
        "server_cpu_split_us_per_point": {k: v / max(acked, 1) * 1e6 for k, v in split.items()},
        "clients_cpu_percent": round(100 * sum(r["cpu_s"] for r in results) / max(window, 1e-9), 1),
        "machine_cpu_percent": round(machine_cpu, 1),
        "ran_out_of_batches": sum(r["exhausted"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:5],
    }


def cpu_split(servers: list[psutil.Process]) -> dict[str, float]:
    """The servers' CPU seconds by where they ran: each one's main thread (trainpilot's event loop),
    its other threads (the SQLite writer and checkpoints, worker threads) and its child processes
    (trainpilot's analysis process). The first two share one GIL."""
    split = {"main thread": 0.0, "other threads": 0.0, "child processes": 0.0}
    for server in servers:
        for thread in server.threads():
            split["main thread" if thread.id == server.pid else "other threads"] += (
                thread.user_time + thread.system_time
            )
        for child in server.children(recursive=True):
            split["child processes"] += sum(child.cpu_times()[:2])
    return split


def stored_points(db: str, run_ids: list[str]) -> int:
    """Points of these runs found in the database file, read beside the running server (WAL)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        marks = ",".join("?" * len(run_ids))
        sql = (
            "SELECT coalesce(sum(count), 0) FROM point_chunks JOIN metric_keys k ON k.id = key_id "
            f"WHERE k.run_id IN ({marks})"
        )
        return int(conn.execute(sql, run_ids).fetchone()[0])


# -- floors: the same points with no server in the way ---------------------------------------------


def rows(first: int, events: int, run_id: str = "floor") -> list[NewEvent]:
    ts = time.time()
    out = []
    for s in range(first, first + events):
        data = dict(zip(ingest_worker.NAMES, ingest_worker.values(s), strict=True))
        out.append(NewEvent(run_id, "metrics", data, seq=s, ts=ts, step=s))
    return out


def floor_sqlite(folder: str, events: int, batches: int) -> dict[str, Any]:
    """Raw sqlite3: the same schema and pragmas, `executemany` of the event rows and of each metric's
    chunk (its points packed, chunks.pack), one transaction per batch: what SQLite itself costs here,
    with none of trainpilot's work."""
    conn = _connect(os.path.join(folder, "floor.db"))
    conn.executescript(SCHEMA)
    conn.executescript(chunks.SCHEMA)
    conn.execute(
        "INSERT INTO metric_keys(id, run_id, name) VALUES " + ",".join(f"({i},'f','{i}')" for i in range(8))
    )
    prepared = [rows(b * events, events) for b in range(batches)]
    started, cpu = time.perf_counter(), time.process_time()
    for batch in prepared:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events VALUES(?,?,?,?,?,?,?)",
            [(e.seq + 1, e.run_id, e.seq, e.kind, e.ts, e.step, b"{}") for e in batch],
        )
        flat: dict[tuple[int, int], list[Any]] = {}
        for e in batch:
            assert e.step is not None and e.seq is not None
            for k, v in enumerate(e.data.values()):
                flat.setdefault((k, e.step >> chunks.SHIFT), []).extend((e.step, e.seq + 1, v, e.ts))
        conn.executemany(
            "INSERT INTO point_chunks VALUES(?,?,?,?)",
            [(*where, *chunks.pack(f)) for where, f in flat.items()],
        )
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    persisted = conn.execute("SELECT sum(count) FROM point_chunks").fetchone()[0]
    conn.close()
    return floor_row("raw sqlite3 executemany (same schema)", events, batches, elapsed, cpu, persisted)


async def concurrently(ids: list[str], writer: Callable[[str], Awaitable[None]]) -> tuple[float, float]:
    """Wall and CPU seconds (every thread's: the store's writer too) of `writer` for every id at once."""
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(writer(r) for r in ids))
    return time.perf_counter() - started, time.process_time() - cpu


def floor_store(folder: str, events: int, batches: int, runs: int) -> dict[str, Any]:
    """trainpilot's SQLiteStore alone, `runs` writers at once: the store's writer thread and group
    commit, with no HTTP, JSON or validation in front of it."""

    async def go() -> tuple[float, float, int]:
        store = SQLiteStore(os.path.join(folder, "store.db"))
        await store.open()
        ids = [f"floor-{r}" for r in range(runs)]
        for run_id in ids:
            await store.create_run(run_id, "bench", run_id, {})
        per_run = batches // runs
        prepared = {r: [rows(b * events, events, r) for b in range(per_run)] for r in ids}

        async def writer(run_id: str) -> None:
            for batch in prepared[run_id]:
                await store.append(batch)

        elapsed, cpu = await concurrently(ids, writer)
        await store.close()
        return elapsed, cpu, stored_points(store.path, ids)

    elapsed, cpu, persisted = asyncio.run(go())
    label = f"trainpilot SQLiteStore.append, {runs} writers (no HTTP)"
    return floor_row(label, events, batches // runs * runs, elapsed, cpu, persisted)


def floor_hub(folder: str, events: int, batches: int, runs: int) -> dict[str, Any]:
    """The server's whole ingest path in one process, `runs` writers at once, with no HTTP: the
    JSON body parsed and validated, stored, analysed and published (Hub.ingest; the detectors run in
    this process here, where the server runs them in a child of its own)."""
    bodies = [
        b'{"events":' + b + b"}" for b in ingest_worker.encode_batches(events, batches // runs, time.time())
    ]

    async def go() -> tuple[float, float, int]:
        store = SQLiteStore(os.path.join(folder, "hub.db"))
        await store.open()
        broker = open_broker("memory://", store)
        store.on_commit = broker.publish
        hub = Hub(Settings(data_dir=folder), store, broker)
        ids = [f"hub-{r}" for r in range(runs)]
        for run_id in ids:
            await hub.create_run(run_id, "bench", run_id, {})

        async def writer(run_id: str) -> None:
            for body in bodies:
                await hub.ingest(run_id, decode_batch(run_id, orjson.loads(body)))

        elapsed, cpu = await concurrently(ids, writer)
        await store.close()
        return elapsed, cpu, stored_points(store.path, ids)

    elapsed, cpu, persisted = asyncio.run(go())
    label = f"trainpilot Hub.ingest, {runs} writers (parse, store, analyse inline, publish; no HTTP)"
    return floor_row(label, events, len(bodies) * runs, elapsed, cpu, persisted)


def feed_line(stored: list[Event]) -> bytes:
    """What the server writes to its analysis process for a stored batch (server/analysts.py)."""
    return orjson.dumps(["feed", "r", metric_rows(stored)]) + b"\n"


def stages(events: int, rounds: int = 5) -> dict[str, float]:
    """CPU µs per 8-metric event of each stage of the server's ingest, one at a time and in steady
    state (the store's share is in the floors): where a server's time per point goes. All but the
    live analysis run on the event loop; that runs in the server's analysis process."""
    bodies = [b'{"events":' + b + b"}" for b in ingest_worker.encode_batches(events, rounds + 1, time.time())]
    decoded = [decode_batch("r", orjson.loads(body)) for body in bodies]
    stored = [[Event(e.seq or 0, e.run_id, e.seq, e.kind, e.ts, e.step, e.data) for e in b] for b in decoded]
    analyzer = Analyzer()
    out = {}
    for name, step in (
        ("parse and validate, in C (server/metrics_batch.py)", lambda i: decode_metrics("r", bodies[i])),
        ("(any other batch: parse JSON)", lambda i: orjson.loads(bodies[i])),
        (
            "(any other batch: validate, wire.decode_batch)",
            lambda i: decode_batch("r", orjson.loads(bodies[i])),
        ),
        ("hand the metrics to the analysis process (one JSON line)", lambda i: feed_line(stored[i])),
        ("live analysis, in that process (Analyzer.observe)", lambda i: analyzer.observe(stored[i])),
        (
            "encode for subscribers (once per event, only while one is subscribed)",
            lambda i: [encoded(e) for e in stored[i]],
        ),
    ):
        step(0)  # warm: the analysis of a run's first steps differs from its steady state
        started = time.process_time()
        for i in range(1, rounds + 1):
            step(i)
        out[name] = (time.process_time() - started) / rounds / events * 1e6
    out["(any other batch: validate, wire.decode_batch)"] -= out["(any other batch: parse JSON)"]
    return out


def floor_row(
    label: str, events: int, batches: int, elapsed: float, cpu: float, persisted: int
) -> dict[str, Any]:
    """Wall rate, and CPU per event (all threads): the CPU figure holds when other load shares the cores."""
    sent = events * METRICS * batches
    return {
        "floor": label,
        "points_per_batch": events * METRICS,
        "points_sent": sent,
        "points_persisted": persisted,
        "points_per_s": min(sent, persisted) / elapsed,
        "cpu_us_per_event": cpu / (events * batches) * 1e6,
    }


# -- the case ----------------------------------------------------------------------------------------


def plan(quick: bool) -> tuple[float, list[tuple[str, int, int]]]:
    """(seconds per point, [(transport, runs, events per batch), ...])."""
    if quick:
        return 0.6, [("rest", 4, 10), ("rest", 4, 1000), ("ws", 4, 1000), ("rest", 16, 100)]
    batch_sweep = [(t, 4, e) for t in ("rest", "ws") for e in (1, 10, 100, 1000)]
    runs_sweep = [("rest", r, 100) for r in (1, 16, 64)]  # 4 runs at 100 is in the batch sweep
    return 3.0, batch_sweep + runs_sweep


PEER_POINTS = [(4, 10), (4, 100)]  # (runs, events a batch): rows of trainpilot's batch sweep
PEER_SECONDS = 4.0  # its round trips take seconds: a shorter window holds too few of them


def peer(seconds: float, clients: int) -> list[dict[str, Any]]:
    """MLflow's tracking server fed the same steps; a row saying why if it could not run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="tp-ingest-mlflow-") as folder:
        try:
            with ingest_mlflow.served(folder) as (url, db, process):
                for runs, events in PEER_POINTS:
                    run_ids = ingest_mlflow.create_runs(url, runs, f"ingest-{runs}x{events}")
                    count = lambda ids=run_ids: ingest_mlflow.stored_points(db, ids)  # noqa: E731
                    row = drive(url, process.pid, "mlflow", run_ids, events, seconds, clients, count)
                    rows.append(row)
                    print(line(row), flush=True)
        except RuntimeError as exc:
            rows.append({"transport": "mlflow", "error": str(exc)[-300:]})
            print(f"  mlflow: not measured: {exc}", flush=True)
    return rows


def run(quick: bool) -> Path:
    seconds, points = plan(quick)
    clients = 2
    measured = []
    with tempfile.TemporaryDirectory(prefix="tp-ingest-") as folder:
        with served(folder) as (url, process):
            db = os.path.join(folder, "server", "trainpilot.db")
            for transport, runs, events in points:
                row = measure(url, db, process.pid, transport, runs, events, seconds, clients)
                measured.append(row)
                print(line(row), flush=True)
        apart = own_core(folder, seconds, clients, [(4, e) for e in (100, 1000)]) if not quick else []
        if not quick:  # MLflow's server start alone outlasts the quick budget
            measured += peer(PEER_SECONDS, clients)
        batches = 8 if quick else 80
        floors = [
            floor_sqlite(folder, 1000, batches),
            floor_store(folder, 1000, batches, 4),
            floor_hub(folder, 1000, batches, 4),
        ]
        for f in floors:
            print(
                f"  floor: {f['floor']:80} {f['points_per_s']:>10,.0f} points/s  "
                f"CPU {f['cpu_us_per_event']:5.1f} µs/event  "
                f"persisted {f['points_persisted']:,}/{f['points_sent']:,}",
                flush=True,
            )
    costs = stages(1000)
    print(
        "  CPU µs per event of 8 metrics: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()), flush=True
    )
    body = {
        "quick": quick,
        "seconds_per_point": seconds,
        "peer_seconds_per_point": PEER_SECONDS,
        "rows": measured,
        "apart": apart,
        "floors": floors,
        "stages_us_per_event": costs,
    }
    return save("ingest", body)


def own_core(
    folder: str, seconds: float, clients: int, points: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """REST rows against a server whose process (event loop, writer) has core 0 to itself, its analysis
    process and the load on core 1: what the same code does given a core of its own."""
    if len(os.sched_getaffinity(0)) < 2:
        return []
    rows = []
    with served(os.path.join(folder, "apart"), cpus={0}) as (url, process):
        time.sleep(0.5)  # its analysis process started: it inherited core 0
        for child in psutil.Process(process.pid).children(recursive=True):
            os.sched_setaffinity(child.pid, {1})
        db = os.path.join(folder, "apart", "server", "trainpilot.db")
        for runs, events in points:
            row = measure(url, db, process.pid, "rest", runs, events, seconds, clients, cpus={1})
            rows.append(row)
            print("  apart:" + line(row), flush=True)
    return rows


def apart_table(result: dict[str, Any]) -> list[str]:
    rows = result.get("apart") or []
    if not rows:
        return []
    lines = [
        "",
        "The same server given a core of its own: its process (event loop, SQLite writer) pinned to core "
        "0, its analysis process and the load processes to core 1 (REST, 4 runs):",
        "",
        "| points / batch | points/s | durable p99 ms (server) | round trip p99 ms "
        "| main thread µs / point | other threads µs / point | analysis process µs / point "
        "| core 0 busy (main + other threads) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        split = r["server_cpu_split_us_per_point"]
        shared = split["main thread"] + split["other threads"]
        lines.append(
            f"| {r['points_per_batch']:,} | {r['points_per_s']:,.0f} | {server_bound(r)} "
            f"| {r['round_trip_ms']['p99']:.2f} | {split['main thread']:.2f} | {split['other threads']:.2f} "
            f"| {split['child processes']:.2f} | {shared * r['points_per_s'] / 1e4:.0f} % |"
        )
    return lines


def server_bound(row: dict[str, Any]) -> str:
    bound = row.get("server_p99_ms_at_most")
    if "server_p99_ms_at_most" not in row:
        return "-"  # the peer: no such histogram
    return f"<= {bound:g}" if bound is not None else "> 10,000"


def line(row: dict[str, Any]) -> str:
    ms = row["round_trip_ms"]
    return (
        f"  {row['transport']:6} {row['runs']:3} runs x {row['points_per_batch']:5} points/batch: "
        f"{row['points_per_s']:>9,.0f} points/s  round trip p50 {ms['p50']:7.2f} ms "
        f"p99 {ms['p99']:7.2f} ms  durable p99 {server_bound(row)} ms  "
        f"CPU server {row['server_cpu_percent']:3.0f}% load {row['clients_cpu_percent']:3.0f}% "
        f"machine {row['machine_cpu_percent']:3.0f}% ({row['server_cpu_us_per_point']:.2f} server µs/point)  "
        f"persisted {row['points_persisted']:,}/{row['points_acked']:,} acked"
        + (f"  ERRORS {row['errors']}" if row["errors"] else "")
    )


def durable_p99(row: dict[str, Any]) -> float | None:
    """Receipt -> durable p99: the server's own histogram where it reported one, else the client's
    round trip (an upper bound: the server answers after the commit)."""
    server = row.get("server_p99_ms_at_most")
    return float(server) if server is not None else row["round_trip_ms"]["p99"]


def verdicts(result: dict[str, Any]) -> list[str]:
    """The issue's target, checked against this run's REST rows: the best rate whose p99 holds."""
    rest = [r for r in result["rows"] if r["transport"] == "rest" and not r.get("errors")]
    whole = [r for r in rest if r["points_persisted"] == r["points_acked"] > 0]
    holding = [r for r in whole if (durable_p99(r) or math.inf) <= TARGET_P99_MS]
    out = []
    if len(whole) < len(rest):
        out.append(f"{len(rest) - len(whole)} REST row(s) persisted fewer points than acknowledged: NOT met")
    if not holding:
        return [*out, f"no REST row held p99 <= {TARGET_P99_MS:g} ms: NOT met"]
    best = max(holding, key=lambda r: r["points_per_s"])
    met = best["points_per_s"] >= TARGET_RATE and len(whole) == len(rest)
    out.append(
        f"REST: {best['points_per_s']:,.0f} points/s sustained with receipt -> durable p99 "
        f"<= {durable_p99(best):g} ms ({best['runs']} runs x {best['points_per_batch']:,} points "
        f"a batch), the best rate whose p99 <= {TARGET_P99_MS:g} ms "
        f"(target >= {TARGET_RATE:,} points/s with p99 <= {TARGET_P99_MS:g} ms): "
        + ("met" if met else "NOT met")
    )
    # Issue 21's other way to meet it: on 2 shared cores the event loop and the writer share one GIL
    # (the split table's last column is that ceiling); the same code given a core of its own.
    apart = [r for r in result.get("apart") or [] if r["points_persisted"] == r["points_acked"] > 0]
    apart = [r for r in apart if (durable_p99(r) or math.inf) <= TARGET_P99_MS]
    if apart:
        top = max(apart, key=lambda r: r["points_per_s"])
        out.append(
            f"the same server with a core of its own: {top['points_per_s']:,.0f} points/s with p99 "
            f"<= {durable_p99(top):g} ms ({top['points_per_batch']:,} points a batch) (the same target, "
            "issue 21's measure where 2 shared cores cannot hold it): "
            + ("met" if top["points_per_s"] >= TARGET_RATE else "NOT met")
        )
    return out


def against_peer(rows: list[dict[str, Any]]) -> list[str]:
    """trainpilot's REST rate over MLflow's at the same runs and batch size (no target: context)."""
    ok = [r for r in rows if "error" not in r and not r["errors"]]
    out = []
    for peer_row in (r for r in ok if r["transport"] == "mlflow"):
        same = [
            r
            for r in ok
            if r["transport"] == "rest"
            and (r["runs"], r["points_per_batch"]) == (peer_row["runs"], peer_row["points_per_batch"])
        ]
        if same and peer_row["points_per_s"] > 0:
            ratio = same[0]["points_per_s"] / peer_row["points_per_s"]
            out.append(
                f"trainpilot REST {ratio:,.0f}x MLflow's rate at {peer_row['runs']} runs x "
                f"{peer_row['points_per_batch']:,} points a batch ({same[0]['points_per_s']:,.0f} against "
                f"{peer_row['points_per_s']:,.0f} points/s); no target, context"
            )
    return out


def section(result: dict[str, Any]) -> list[str]:
    lines = [
        "## 3. Ingest: points per second into one server, receipt → durable",
        "",
        f"One `trainpilot serve` process with its embedded SQLite store (WAL, `synchronous=NORMAL`: a "
        "commit survives the process, not a power cut); load from separate processes "
        "(`bench/ingest_worker.py`, at most 2, asyncio), one connection per run, one batch in flight per "
        f"connection, {result['seconds_per_point']:g} s per row, all rows into the same server and "
        "database. A **point is one scalar**: every event carries 8 metrics, so an event is 8 points. "
        "*persisted* is read from the SQLite file afterwards; the rate counts only points both "
        "acknowledged and found there. *durable p99* is the server's own receipt → durable time "
        "(its `trainpilot_ingest_seconds` histogram, read before and after each row: the figure is the "
        "upper bound of the bucket holding the 99th percentile); the client's round trip (send → "
        "answer, after the commit) is shown beside it. CPU %: 100 = one core (the machine has "
        f"{result['machine']['cpus']}), over the row's window; *machine* is every process's, so "
        "load from outside the benchmark shows as machine > server + load; the server's CPU per point "
        "holds better than its rate when other load shares the cores. With one batch in flight "
        "per run, a batch queues behind the other runs' batches: once the server is saturated the round "
        "trip grows as runs x points a batch / rate, so large batches buy rate with latency. The peer: "
        "an MLflow tracking server (`mlflow server`, its defaults, SQLite backend, in its own "
        "environment; its CPU counts all its processes) fed the same steps through its REST `log-batch` "
        "(at most 1,000 metrics a request) from the same load processes, counted in its own database, "
        f"{result.get('peer_seconds_per_point', 4):g} s per row; full mode only (its start alone "
        "outlasts the quick budget).",
        "",
        "| server, transport | runs | points / batch | points/s | durable p99 ms (server) "
        "| round trip p50 ms | p99 ms | max ms "
        "| CPU % server | load | machine | server CPU µs / point | persisted / acked |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {LABELS[r['transport']]} | **not measured**: {r['error'][:200]} |" + " |" * 11)
            continue
        ms = r["round_trip_ms"]
        flag = f" ({r['errors'][0][:80]})" if r["errors"] else ""
        lines.append(
            f"| {LABELS[r['transport']]} | {r['runs']} "
            f"| {r['points_per_batch']:,} "
            f"| {r['points_per_s']:,.0f} | {server_bound(r)} "
            f"| {ms['p50']:.2f} | {ms['p99']:.2f} | {ms['max']:.2f} "
            f"| {r['server_cpu_percent']:.0f} | {r['clients_cpu_percent']:.0f} "
            f"| {r['machine_cpu_percent']:.0f} | {r['server_cpu_us_per_point']:.2f} "
            f"| {r['points_persisted']:,} / {r['points_acked']:,}{flag} |"
        )
    lines += [
        "",
        "Floors, the same 8-metric events in batches with no server in front (one process):",
        "",
        "| floor | points / batch | points/s | CPU µs per event (all threads) | persisted / sent |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for f in result["floors"]:
        lines.append(
            f"| {f['floor']} | {f['points_per_batch']:,} | {f['points_per_s']:,.0f} "
            f"| {f['cpu_us_per_event']:.1f} | {f['points_persisted']:,} / {f['points_sent']:,} |"
        )
    stages_ = result["stages_us_per_event"]
    budget = 1e6 / (TARGET_RATE / METRICS)
    lines += [
        "",
        "Where the time per point goes: the CPU time of each stage of the server's ingest, alone, per "
        "event of 8 metrics (steady state, one process); all but the live analysis run on the event loop, "
        "the analysis in the server's analysis process. A batch of metrics events alone (every row here) "
        "takes the C path; the Python one, in parentheses, is what any other batch takes. The target leaves "
        f"{budget:.1f} µs per event ({TARGET_RATE:,} points/s ÷ {METRICS}) for everything, store included, "
        "and one Python process runs its event loop on one core at a time:",
        "",
        "| stage | CPU µs per event | per point |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {v:.1f} | {v / METRICS:.2f} |" for k, v in stages_.items()],
    ]
    lines += split_table(result)
    lines += apart_table(result)
    lines += ["", "Target (issues 10 and 21), checked against this run:", ""]
    lines += [f"- {v}" for v in verdicts(result)]
    lines += [f"- {v}" for v in against_peer(result["rows"])]
    lines += ["", *growth_plots(result["rows"]), ""]
    return lines


def split_table(result: dict[str, Any]) -> list[str]:
    """Where the server's CPU went in the REST rows of 800-point batches: what bounds the rate."""
    rows = [
        r
        for r in result["rows"]
        if r["transport"] == "rest"
        and r.get("points_per_batch") == 800
        and "server_cpu_split_us_per_point" in r
    ]
    if not rows:
        return []
    names = list(rows[0]["server_cpu_split_us_per_point"])
    lines = [
        "",
        "The server's CPU per point by where it ran, in the rows of 800-point batches (psutil, each "
        "thread's and process's CPU over the row). The event loop (the main thread) and the store's "
        "writer thread share one GIL; the writer lets go of it inside SQLite's statements, so their sum "
        "is an upper estimate of the GIL's time a point, and 1 s over it the rate were all of it under "
        "the GIL. The analysis process runs beside them, on the other core, and all three share the "
        "machine's cores with the load:",
        "",
        "| runs | points/s | " + " | ".join(f"{n} µs / point" for n in names) + " | main + other threads "
        "(1 s / it) |",
        "| ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    for r in rows:
        split = r["server_cpu_split_us_per_point"]
        shared = split["main thread"] + split["other threads"]
        lines.append(
            f"| {r['runs']} | {r['points_per_s']:,.0f} | "
            + " | ".join(f"{split[n]:.2f}" for n in names)
            + f" | {shared:.2f} ({1e6 / shared:,.0f} points/s) |"
        )
    return lines


def growth_plots(rows: list[dict[str, Any]]) -> list[str]:
    """Case 7 for ingest: rate and p99 against batch size (4 runs) and against concurrent runs."""
    rows = [r for r in rows if "error" not in r]
    by_batch = [r for r in rows if r["runs"] == 4]
    by_runs = [r for r in rows if r["transport"] == "rest" and r["points_per_batch"] == 100 * METRICS]
    names = LABELS

    def series(chosen: list[dict[str, Any]], x: str, y: Any) -> dict[str, list[tuple[float, float]]]:
        return {
            names[t]: [(r[x], y(r)) for r in chosen if r["transport"] == t]
            for t in names
            if any(r["transport"] == t for r in chosen)
        }

    links = [
        plots.growth(
            "bench_ingest_rate_batch",
            "Ingest rate against batch size (4 runs)",
            "points per request",
            "points/s persisted",
            series(by_batch, "points_per_batch", lambda r: r["points_per_s"]),
        ),
        plots.growth(
            "bench_ingest_p99_batch",
            "Round-trip p99 against batch size (4 runs)",
            "points per request",
            "p99 ms",
            series(by_batch, "points_per_batch", lambda r: r["round_trip_ms"]["p99"]),
        ),
        plots.growth(
            "bench_ingest_rate_runs",
            "Ingest rate against concurrent runs (800 points a batch)",
            "runs writing at once",
            "points/s persisted",
            series(by_runs, "runs", lambda r: r["points_per_s"]),
        ),
        plots.growth(
            "bench_ingest_p99_runs",
            "Round-trip p99 against concurrent runs (800 points a batch)",
            "runs writing at once",
            "p99 ms",
            series(by_runs, "runs", lambda r: r["round_trip_ms"]["p99"]),
        ),
    ]
    return [f"![{Path(link).stem}]({link})" for link in links]


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
