"""Append throughput of the PostgreSQL store: events/s for a few writer and batch shapes.

python bench/postgres_append.py      # against TRAINPILOT_TEST_POSTGRES_URL (default: local `test`)

Runs in a throw-away schema (created, migrated, dropped). Every append is durable (the server's own
fsync settings); "writers" are concurrent tasks, each appending to its own run, so concurrent small
appends show what group commit buys; "stores" are separate pools, as separate replicas would be.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
from common import postgres_schema

from trainpilot.events import NewEvent
from trainpilot.store import Store, open_store
from trainpilot.store.postgres_migrations import migrate

CASES = [(1, 1, 300, 1), (1, 16, 50, 1), (1, 1, 50, 100), (1, 8, 25, 100), (2, 8, 25, 100), (2, 16, 50, 1)]


async def case(stores: list[Store], writers: int, batches: int, size: int) -> float:
    """Events per second, `writers` tasks each appending `batches` batches of `size` metrics events."""
    runs = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(writers)]
    for run_id in runs:
        await stores[0].create_run(run_id, "bench", run_id, {})

    async def write(i: int, run_id: str) -> None:
        for b in range(batches):
            steps = range(b * size, (b + 1) * size)
            data = {"loss": 1.0, "acc": 0.5, "lr": 0.1}
            await stores[i % len(stores)].append(
                [NewEvent(run_id, "metrics", data, seq=s, ts=time.time(), step=s) for s in steps]
            )

    start = time.perf_counter()
    await asyncio.gather(*(write(i, r) for i, r in enumerate(runs)))
    return writers * batches * size / (time.perf_counter() - start)


async def main(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
    stores = [open_store(url), open_store(url)]
    for s in stores:
        await s.open()
    print("stores  writers  events/append  events/s")
    for n_stores, writers, batches, size in CASES:
        rate = await case(stores[:n_stores], writers, batches, size)
        print(f"{n_stores:>6}  {writers:>7}  {size:>13}  {rate:>8,.0f}")
    for s in stores:
        await s.close()


if __name__ == "__main__":
    with postgres_schema() as url:
        asyncio.run(main(url))
