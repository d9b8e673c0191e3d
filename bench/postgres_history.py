"""History reads of the PostgreSQL store: both ways of finding each bucket's extremes, timed.

python bench/postgres_history.py     # against TRAINPILOT_TEST_POSTGRES_URL (default: local `test`)

One metric of 1M points (loaded straight into `points`, random values), read whole and as a 10k-step
window at max_points=1000, first sorted at once, then per bucket (store/postgres.py, DENSE_BUCKET
picks between them). Runs in a throw-away schema.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
from common import postgres_schema

import trainpilot.store.postgres as pg
from trainpilot.events import NewEvent
from trainpilot.store import open_store
from trainpilot.store.postgres_migrations import migrate

POINTS = 1_000_000


async def main(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
    store = open_store(url)
    await store.open()
    await store.create_run("r", "bench", "r", {})
    await store.append([NewEvent("r", "metrics", {"loss": 1.0}, seq=0, ts=1.0, step=0)])
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO points SELECT 1, g, g + 1, random(), 1.0 FROM generate_series(1, %s) g", (POINTS,)
        )
        await conn.execute("ANALYZE points")
    print("range          sorted   per bucket")
    for name, lo, hi in (("1M points", None, None), ("10k window", 500_000, 510_000)):
        times = []
        for dense_bucket in (10**12, 0):  # everything sparse, then everything dense
            pg.DENSE_BUCKET = dense_bucket
            await store.history("r", ["loss"], start_step=lo, end_step=hi, max_points=1000)  # warm
            start = time.perf_counter()
            await store.history("r", ["loss"], start_step=lo, end_step=hi, max_points=1000)
            times.append(time.perf_counter() - start)
        print(f"{name:<12} {times[0] * 1000:>7.0f} ms {times[1] * 1000:>7.0f} ms")
    await store.close()


if __name__ == "__main__":
    with postgres_schema() as url:
        asyncio.run(main(url))
