"""What SQLite's own work costs per point for each part of the embedded store's schema.

Case 3's 800-point batches (100 events of 8 metrics, 4 runs taking turns) written the way the store's
writer writes them (multi-row statements, one transaction a batch, WAL, `synchronous=NORMAL`), for:
the whole schema; events stored without their metrics JSON; without the two event indexes; points
alone; and points in chunks, a layout the store does not have (one row per metric and batch, its
columns packed), to size it. Per point: the process's CPU, building the rows included. Run twice,
interleaved.

    python bench/schema_cost.py [BATCHES]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from array import array
from typing import Any

import orjson

from trainpilot.store.sqlite import SCHEMA, _connect
from trainpilot.store.statements import insert_rows

VARIANTS = (
    "whole schema",
    "events without their data",
    "no event indexes",
    "points alone",
    "points in chunks",
)
# A layout the store does not have, to size it: one row per metric and batch, its steps, event ids,
# values and times packed, instead of one row per point.
CHUNKS = """CREATE TABLE chunks(
    key_id INTEGER NOT NULL, first_step INTEGER NOT NULL, last_step INTEGER NOT NULL,
    steps BLOB NOT NULL, event_ids BLOB NOT NULL, point_values BLOB NOT NULL, ts BLOB NOT NULL,
    PRIMARY KEY(key_id, first_step)) WITHOUT ROWID"""


def cost(folder: str, variant: str, batches: int) -> float:
    path = os.path.join(folder, f"{variant.replace(' ', '-')}.db")
    for suffix in ("", "-wal", "-shm"):  # each round on a fresh file
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = _connect(path)
    conn.executescript(SCHEMA)
    conn.execute(CHUNKS)
    if variant == "no event indexes":
        conn.execute("DROP INDEX events_run_seq")
        conn.execute("DROP INDEX events_run_id")
    event_id, points, started = 0, 0, time.process_time()
    for batch in range(batches):
        run, keys = f"run-{batch % 4}", 1 + 8 * (batch % 4)
        events, rows = [], []
        for _ in range(100):
            event_id += 1
            ts = 1.7e9 + event_id
            data = {f"train/m{k}": 0.5 + k + event_id * 1e-6 for k in range(8)}
            blob = b"{}" if variant == "events without their data" else orjson.dumps(data)
            events.append((event_id, run, event_id, "metrics", ts, event_id, blob))
            rows += [(keys + k, event_id, event_id, value, ts) for k, value in enumerate(data.values())]
        conn.execute("BEGIN")
        if variant not in ("points alone", "points in chunks"):
            insert_rows(conn, "INSERT INTO events", 7, events)
        if variant == "points in chunks":
            insert_rows(conn, "INSERT INTO chunks", 7, chunked(rows))
        else:
            insert_rows(conn, "INSERT INTO points", 5, rows)
        conn.execute("COMMIT")
        points += len(rows)
    conn.close()
    return (time.process_time() - started) / points * 1e6


def chunked(rows: list[tuple[int, int, int, float, float]]) -> list[tuple[Any, ...]]:
    """One row per metric: its points' columns packed as arrays."""
    by_key: dict[int, list[tuple[int, int, int, float, float]]] = {}
    for row in rows:
        by_key.setdefault(row[0], []).append(row)
    out = []
    for key_id, points in by_key.items():
        _, steps, ids, values, ts = zip(*points, strict=True)
        out.append(
            (
                key_id,
                steps[0],
                steps[-1],
                array("q", steps).tobytes(),
                array("q", ids).tobytes(),
                array("d", values).tobytes(),
                array("d", ts).tobytes(),
            )
        )
    return out


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
