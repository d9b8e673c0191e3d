"""Case 8 (issue 11): one server replica against two, sharing PostgreSQL and Redis, next to the
embedded SQLite server on the same workload.

Ingest: the load of case 3 (4 runs, 100 events of 8 metrics a batch, one batch in flight per run)
from 2 load processes, against one server or split across two replicas; points counted only when
acknowledged and found in the database. Fan-out: 1000 SSE subscribers, all on one server or half
on each replica, while a training process logs through the SDK to the first at 20 events/s: the
subscribers on the second replica get every event through Redis. Needs the machine's PostgreSQL
(TRAINPILOT_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test) and a
`redis-server` binary (one is started on a free port); without them the case says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import case_fanout
import case_ingest
import httpx
from common import POSTGRES_URL, postgres_schema, save
from served import served

RUNS, EVENTS, CLIENTS = 4, 100, 2
SUBSCRIBERS, RATE = 1000, 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def migrated_schema() -> Iterator[str]:
    """A store URL on a fresh schema of its own, migrated, dropped afterwards."""
    with postgres_schema() as url:
        migrate = [sys.executable, "-m", "trainpilot.cli", "migrate", "--store", url]
        subprocess.run(migrate, check=True, capture_output=True, timeout=60)
        yield url


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(10)


def postgres_points(url: str, run_ids: list[str]) -> int:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        sql = "SELECT count(*) FROM points JOIN metric_keys k ON k.id = key_id WHERE k.run_id = ANY(%s)"
        row = conn.execute(sql, (run_ids,)).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def deployment(kind: str, folder: str) -> Iterator[tuple[list[tuple[str, int]], str | None]]:
    """(url, pid) of each server and the PostgreSQL URL: "sqlite" (one server, no PostgreSQL),
    "postgres-1" or "postgres-2" (replicas)."""
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url, process = stack.enter_context(served(os.path.join(folder, "sqlite")))
            yield [(url, process.pid)], None
            return
        store = stack.enter_context(migrated_schema())
        broker = stack.enter_context(redis_server())
        servers = []
        for i in range(int(kind[-1])):
            flags = ("--store", store, "--broker", broker)
            url, process = stack.enter_context(served(os.path.join(folder, f"{kind}-{i}"), *flags))
            servers.append((url, process.pid))
        yield servers, store


def ingest(kind: str, folder: str, seconds: float) -> dict[str, Any]:
    with deployment(kind, folder) as (servers, store):
        urls, pids = [u for u, _ in servers], [p for _, p in servers]
        run_ids = [f"replicas-{kind}-{i}-{uuid.uuid4().hex[:6]}" for i in range(RUNS)]
        with httpx.Client(base_url=urls[0]) as client:
            for run_id in run_ids:
                client.post("/api/runs", json={"id": run_id, "project": "bench-replicas"}).raise_for_status()
        db = os.path.join(folder, "sqlite", "server", "trainpilot.db")

        def persisted() -> int:
            if store is None:
                return case_ingest.stored_points(db, run_ids)
            return postgres_points(store, run_ids)

        row = case_ingest.drive(urls, pids, "rest", run_ids, EVENTS, seconds, CLIENTS, persisted)
    return {"deployment": kind, **row}


def fanout(kind: str, folder: str, events: int) -> list[dict[str, Any]]:
    """Subscribers split across the servers; the SDK logs to the first; one row per server."""
    with deployment(kind, folder) as (servers, _):
        system = case_fanout.Trainpilot(servers[0][0], servers[0][1], os.path.join(folder, f"client-{kind}"))
        share = SUBSCRIBERS // len(servers)
        clients = []
        try:
            for url, _ in servers:
                port = int(url.rsplit(":", 1)[1])
                target = SimpleNamespace(port=port, run_id=system.run_id)
                clients.append(case_fanout.Subscribers(target, "sse", share))  # type: ignore[arg-type]
            for subs in clients:
                subs.command("mark", "MARKED")
            system.emit(case_fanout.WARMUP, RATE)
            for subs in clients:
                subs.command(f"wait {case_fanout.WARMUP} {case_fanout.GRACE_S}", "RESULT")
                subs.command("mark", "MARKED")
            system.emit(events, RATE)
            results = [subs.command(f"wait {events} {case_fanout.GRACE_S}", "RESULT") for subs in clients]
        finally:
            for subs in clients:
                subs.close()
            system.run.finish(timeout=30)
            system.http.close()
    rows = []
    for i, raw in enumerate(results):
        result = json.loads(raw)
        where = "the ingesting server" if i == 0 else "the other replica (through Redis)"
        rows.append({"deployment": kind, "replica": i, "where": where, "events": events, **result})
    return rows


def run(quick: bool) -> Path:
    if shutil.which("redis-server") is None:
        return save("replicas", {"quick": quick, "error": "redis-server is not installed"})
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except Exception as exc:
        return save("replicas", {"quick": quick, "error": f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}"})
    seconds, events = (1.5, 20) if quick else (4.0, 80)
    ingest_rows, fanout_rows = [], []
    with tempfile.TemporaryDirectory(prefix="tp-replicas-") as folder:
        for kind in ("sqlite", "postgres-1", "postgres-2"):
            row = ingest(kind, folder, seconds)
            ingest_rows.append(row)
            kept = f"{row['points_persisted']:,}/{row['points_acked']:,}"
            p99 = row["round_trip_ms"]["p99"]
            print(f"  ingest {kind:10} {row['points_per_s']:9,.0f} points/s  p99 {p99:.1f} ms  kept {kept}")
        for kind in ("sqlite", "postgres-1", "postgres-2"):
            for row in fanout(kind, folder, events):
                fanout_rows.append(row)
                latency = f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
                lost = f"lost {row['lost']}  cut {row['unhealthy']}"
                print(
                    f"  fan-out {kind} replica {row['replica']}: {row['subscribers']} subs  {latency}  {lost}"
                )
    return save("replicas", {"quick": quick, "ingest": ingest_rows, "fanout": fanout_rows})


LABELS = {
    "sqlite": "one server, SQLite",
    "postgres-1": "one replica, PostgreSQL + Redis",
    "postgres-2": "two replicas, PostgreSQL + Redis",
}


def section(result: dict[str, Any]) -> list[str]:
    lines = ["## 8. Beyond one machine: one replica against two (PostgreSQL + Redis)", ""]
    if "error" in result:
        return [*lines, f"Not measured: {result['error']}.", ""]
    lines += [
        f"Ingest: {RUNS} runs, {EVENTS} events of 8 metrics a batch, from {CLIENTS} load processes (with two "
        "replicas, one per replica); every replica, PostgreSQL, Redis and the load on the same 2 cores. "
        "Points count only when acknowledged and found in the database.",
        "",
        "| deployment | points/s | round trip p50 ms | p99 ms | servers' CPU % | persisted / acknowledged |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["ingest"]:
        rt = row["round_trip_ms"]
        lines.append(
            f"| {LABELS[row['deployment']]} | {row['points_per_s']:,.0f} | {rt['p50']:.1f} | {rt['p99']:.1f} "
            f"| {row['server_cpu_percent']} | {row['points_persisted']:,} / {row['points_acked']:,} |"
        )
    lines += [
        "",
        f"Fan-out: {SUBSCRIBERS} SSE subscribers (with two replicas, half on each), a training "
        f"process logging through the SDK to the first server at {RATE:g} events/s; latency from "
        "`run.log()` to receipt.",
        "",
        "| deployment | subscribers on | subscribers | p50 ms | p99 ms | max ms | lost | cut off |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["fanout"]:
        lines.append(
            f"| {LABELS[row['deployment']]} | {row['where']} | {row['subscribers']} | {row['p50_ms']} "
            f"| {row['p99_ms']} | {row['max_ms']} | {row['lost']} | {row['unhealthy']} |"
        )
    lost = sum(r["lost"] + r["unhealthy"] for r in result["fanout"])
    lines += ["", f"Events lost or subscribers cut off across all deployments: {lost} (must be 0).", ""]
    return lines


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
