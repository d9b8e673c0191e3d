"""What SQLite's own work costs per point for each part of the embedded store's schema.

Case 3's 800-point batches (100 events of 8 metrics, 4 runs taking turns) written the way the store's
writer writes them (multi-row statements, one transaction a batch, WAL, `synchronous=NORMAL`), for:
the whole schema (events, and points in chunks: one row per metric, 64-step block and transaction,
store/chunks.py); events stored without their metrics JSON; without the two event indexes; the
chunks alone; and the layout before chunks, one row per point (with the events, and alone). Per
point: the process's CPU, building the rows included. Run twice, interleaved.

    python bench/schema_cost.py [BATCHES]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import orjson

from trainpilot.store import chunks
from trainpilot.store.sqlite import SCHEMA, _connect
from trainpilot.store.statements import insert_rows

VARIANTS = (
    "whole schema",
    "events without their data",
    "no event indexes",
    "chunks alone",
    "one row a point",
    "one row a point alone",
)
# The layout before chunks, to compare: one row per point, clustered by metric and step.
POINTS = """CREATE TABLE points(
    key_id INTEGER NOT NULL, step INTEGER NOT NULL, event_id INTEGER NOT NULL,
    value REAL NOT NULL, ts REAL NOT NULL, PRIMARY KEY(key_id, step, event_id)) WITHOUT ROWID"""


def cost(folder: str, variant: str, batches: int) -> float:
    path = os.path.join(folder, f"{variant.replace(' ', '-')}.db")
    for suffix in ("", "-wal", "-shm"):  # each round on a fresh file
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = _connect(path)
    conn.executescript(SCHEMA)
    conn.executescript(chunks.SCHEMA)
    conn.execute(POINTS)
    if variant == "no event indexes":
        conn.execute("DROP INDEX events_run_seq")
        conn.execute("DROP INDEX events_run_id")
    per_point = variant.startswith("one row a point")
    event_id, points, started = 0, 0, time.process_time()
    for batch in range(batches):
        run, keys = f"run-{batch % 4}", 1 + 8 * (batch % 4)
        events, rows = [], []
        flat: dict[tuple[int, int], list[Any]] = {}
        for _ in range(100):
            event_id += 1
            ts = 1.7e9 + event_id
            data = {f"train/m{k}": 0.5 + k + event_id * 1e-6 for k in range(8)}
            blob = b"{}" if variant == "events without their data" else orjson.dumps(data)
            events.append((event_id, run, event_id, "metrics", ts, event_id, blob))
            for k, value in enumerate(data.values()):
                if per_point:
                    rows.append((keys + k, event_id, event_id, value, ts))
                else:
                    flat.setdefault((keys + k, event_id >> chunks.SHIFT), []).extend(
                        (event_id, event_id, value, ts)
                    )
        conn.execute("BEGIN")
        if not variant.endswith("alone"):
            insert_rows(conn, "INSERT INTO events", 7, events)
        if per_point:
            insert_rows(conn, "INSERT INTO points", 5, rows)
        else:
            insert_rows(conn, "INSERT INTO point_chunks", 4, [(*w, *chunks.pack(f)) for w, f in flat.items()])
        conn.execute("COMMIT")
        points += 800
    conn.close()
    return (time.process_time() - started) / points * 1e6


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    with tempfile.TemporaryDirectory() as folder:
        for round_ in (1, 2):
            for variant in VARIANTS:
                print(
                    f"round {round_}  {variant:26} {cost(folder, variant, batches):.2f} µs a point",
                    flush=True,
                )


if __name__ == "__main__":
    main()
