"""What SQLite's own work costs per point for each part of the embedded store's schema.

Case 3's 800-point batches (100 events of 8 metrics, 4 runs taking turns) written the way the store's
writer writes them (multi-row statements, one transaction a batch, WAL, `synchronous=NORMAL`), for:
the whole schema; events stored without their metrics JSON; without the two event indexes; points
alone. Per point: the process's CPU, building the rows included. Run twice, interleaved.

    python bench/schema_cost.py [BATCHES]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import orjson

from trainpilot.store.sqlite import SCHEMA, _connect
from trainpilot.store.statements import insert_rows

VARIANTS = ("whole schema", "events without their data", "no event indexes", "points alone")


def cost(folder: str, variant: str, batches: int) -> float:
    path = os.path.join(folder, f"{variant.replace(' ', '-')}.db")
    for suffix in ("", "-wal", "-shm"):  # each round on a fresh file
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = _connect(path)
    conn.executescript(SCHEMA)
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
        if variant != "points alone":
            insert_rows(conn, "INSERT INTO events", 7, events)
        insert_rows(conn, "INSERT INTO points", 5, rows)
        conn.execute("COMMIT")
        points += len(rows)
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
