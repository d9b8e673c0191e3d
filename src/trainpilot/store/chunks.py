"""Points stored in chunks: one row per metric, 64-step block and transaction, its points packed.

One row per point made SQLite's B-tree inserts the biggest part of the embedded writer's time
(`bench/schema_cost.py`). A chunk row holds the points one transaction wrote for one metric in one
block (``step >> SHIFT``): their steps, event ids, values and times as four packed arrays, sorted by
(step, event id). Readers find a metric's points by block through the `(key_id, block)` index and
merge the chunks of a block (a block is written by several transactions, a step can be logged again
later) in (step, event id) order, the order every history answer is defined in.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sqlite3
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from trainpilot.events import Point
from trainpilot.store.statements import insert_rows

log = logging.getLogger("trainpilot.store")

SHIFT = 6
STEPS = 1 << SHIFT

SCHEMA = """
CREATE TABLE IF NOT EXISTS point_chunks(
    key_id INTEGER NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL, packed BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS point_chunks_block ON point_chunks(key_id, block);
"""
# A rowid table and an index, not a WITHOUT ROWID table keyed by (key_id, block, first event id):
# chunk rows are kilobytes, and an ad hoc pair of 800-point batches cost 1.13 µs a point this way
# against 1.76 clustered (one row a point: 2.0). Rowids grow, so a block's chunks read in rowid order
# are in the order they were written.
CHUNKS_SQL = "SELECT block, count, packed FROM point_chunks WHERE key_id=? AND block BETWEEN ? AND ?"
LATEST_UPSERT = (
    " ON CONFLICT(key_id) DO UPDATE SET "
    "step=excluded.step, event_id=excluded.event_id, value=excluded.value, ts=excluded.ts"
)


def pack(flat: list[Any]) -> tuple[int, bytes]:
    """A chunk's points, given as one flat list of (step, event id, value, ts) quadruples in the order
    they were written, as (count, packed bytes) sorted by (step, event id)."""
    count, packed, _, _ = seal(flat)
    return count, packed


def seal(flat: list[Any]) -> tuple[int, bytes, Extreme, Extreme]:
    """`pack`, and the chunk's lowest and highest point, each the earliest (step, event id) of its
    value: with the points in that order, the first of equal values, found in C."""
    steps = flat[0::4]
    if steps != sorted(steps):  # a step logged again lower in the same block: rare, sort the quads
        quads = sorted(zip(steps, flat[1::4], flat[2::4], flat[3::4], strict=True))
        flat = [field for quad in quads for field in quad]
        steps = flat[0::4]
    ids, values, ts = flat[1::4], flat[2::4], flat[3::4]
    low, high = values.index(min(values)), values.index(max(values))
    packed = array("q", steps).tobytes() + array("q", ids).tobytes()
    packed += array("d", values).tobytes() + array("d", ts).tobytes()
    return (
        len(steps),
        packed,
        (values[low], steps[low], ids[low], ts[low]),
        (values[high], steps[high], ids[high], ts[high]),
    )


Extreme = tuple[float, int, int, float]  # a point as a summary holds it: value, step, event id, ts
Sealed = tuple[int, int, int, bytes, Extreme, Extreme]  # key id, block, then what `seal` returns


class Block:
    """One metric's points in one block, every chunk merged, as columns in (step, event id) order.

    Steps and values are decoded into lists (a reader bisects the one and scans the other); event ids
    and times stay packed until a point is taken."""

    __slots__ = ("ids", "steps", "ts", "values")

    def __init__(self, chunks: list[tuple[int, bytes]]) -> None:
        if len(chunks) == 1:
            count, packed = chunks[0]
            view = memoryview(packed)
            width = 8 * count
            self.steps: list[int] = view[:width].cast("q").tolist()
            self.values = cast(list[float], view[2 * width : 3 * width].cast("d").tolist())
            self.ids: Sequence[int] = view[width : 2 * width].cast("q")
            self.ts: Sequence[float] = view[3 * width :].cast("d")
            return
        steps: list[int] = []
        ids: list[int] = []
        values: list[float] = []
        ts: list[float] = []
        for count, packed in chunks:
            view = memoryview(packed)
            width = 8 * count
            steps += view[:width].cast("q").tolist()
            ids += view[width : 2 * width].cast("q").tolist()
            values += cast(list[float], view[2 * width : 3 * width].cast("d").tolist())
            ts += cast(list[float], view[3 * width :].cast("d").tolist())
        if steps != sorted(steps):
            # a stable sort by step is (step, event id) order: ids grow with rowids, as chunks are read
            order = sorted(range(len(steps)), key=steps.__getitem__)
            steps = [steps[i] for i in order]
            ids = [ids[i] for i in order]
            values = [values[i] for i in order]
            ts = [ts[i] for i in order]
        self.steps, self.ids, self.values, self.ts = steps, ids, values, ts

    def point(self, i: int) -> Point:
        return Point(self.steps[i], self.values[i], self.ts[i], self.ids[i])

    def span(self, first: int, last: int) -> tuple[int, int]:
        """The index range of steps first..last."""
        return bisect.bisect_left(self.steps, first), bisect.bisect_right(self.steps, last)

    def extremes(self, first: int, last: int) -> tuple[int, Point, Point] | None:
        """How many points steps first..last hold, and their lowest and highest, each the earliest
        (step, event id) of its value; None when there are none."""
        i, j = self.span(first, last)
        if i >= j:
            return None
        part = self.values[i:j]
        low, high = min(part), max(part)
        return j - i, self.point(self.values.index(low, i, j)), self.point(self.values.index(high, i, j))


def blocks(
    conn: sqlite3.Connection, key_id: int, lo: int, hi: int, newest_first: bool = False
) -> Iterator[tuple[int, Block]]:
    """Blocks lo..hi of a metric that hold points, in block order (or from the last), read lazily:
    a reader that stops early reads no further rows."""
    order = " ORDER BY block DESC, rowid" if newest_first else " ORDER BY block, rowid"
    return _merged(conn.execute(CHUNKS_SQL + order, (key_id, lo, hi)))


def chosen(conn: sqlite3.Connection, key_id: int, wanted: list[int]) -> dict[int, Block]:
    """The blocks of a metric in `wanted` (sorted) that hold points, in one statement."""
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT block, count, packed FROM point_chunks WHERE key_id=? "
        "AND block IN (SELECT value FROM json_each(?)) ORDER BY block, rowid",
        (key_id, "[" + ",".join(map(str, wanted)) + "]"),
    )
    return dict(_merged(rows))


def _merged(rows: Iterable[tuple[int, int, bytes]]) -> Iterator[tuple[int, Block]]:
    """(block, count, packed) rows, a block's chunks next to each other in rowid order, as Blocks."""
    for block, chunks in itertools.groupby(rows, key=lambda row: row[0]):
        yield block, Block([(count, packed) for _, count, packed in chunks])


def first_points(conn: sqlite3.Connection, key_id: int, lo: int, hi: int, limit: int) -> list[Point]:
    """The first `limit` points of steps lo..hi in (step, event id) order."""
    out: list[Point] = []
    for _, block in blocks(conn, key_id, lo >> SHIFT, hi >> SHIFT):
        i, j = block.span(lo, hi)
        out.extend(block.point(k) for k in range(i, min(j, i + limit - len(out))))
        if len(out) >= limit:
            break
    return out


def last_point(conn: sqlite3.Connection, key_id: int, lo: int, hi: int) -> Point | None:
    """The last point of steps lo..hi in (step, event id) order."""
    for _, block in blocks(conn, key_id, lo >> SHIFT, hi >> SHIFT, newest_first=True):
        i, j = block.span(lo, hi)
        if i < j:
            return block.point(j - 1)
    return None


def top_block(conn: sqlite3.Connection, key_id: int) -> int:
    """The highest block a metric has points in; -1 for none."""
    (highest,) = conn.execute("SELECT max(block) FROM point_chunks WHERE key_id=?", (key_id,)).fetchone()
    return -1 if highest is None else int(highest)


class Pending:
    """The writer's side: the points of the transaction being written. Per run, each metric's open
    chunk (`runs`: run id -> metric name -> [block, key id, flat (step, event id, value, ts) list]),
    so a point costs one lookup and one extend; written, with each chunk's summary taken, before the
    transaction commits."""

    def __init__(self, key_id: Callable[[sqlite3.Connection, str, str], int]) -> None:
        self.runs: dict[str, dict[str, list[Any]]] = {}
        self._left: list[list[Any]] = []
        self._key_id = key_id

    def start(self, conn: sqlite3.Connection, run_id: str, key: str, block: int) -> list[Any]:
        """A metric's point in another block than its open chunk's: a new chunk (the old one kept)."""
        chunks = self.runs.setdefault(run_id, {})
        old = chunks.get(key)
        if old is not None:
            self._left.append(old)
        chunk: list[Any] = [block, self._key_id(conn, run_id, key), []]
        chunks[key] = chunk
        return chunk

    def sealed(self) -> list[Sealed]:
        """Every chunk of the transaction, packed, with its extremes; each metric's in written order."""
        every = self._left + [chunk for chunks in self.runs.values() for chunk in chunks.values()]
        return [(key_id, block, *seal(flat)) for block, key_id, flat in every]

    def write(self, conn: sqlite3.Connection, sealed: list[Sealed]) -> None:
        """The chunks, and each metric's latest point (its open chunk's last), into the tables."""
        latest = []
        for chunks in self.runs.values():
            for _, key_id, flat in chunks.values():
                step, event_id, value, ts = flat[-4:]
                latest.append((key_id, step, event_id, value, ts))
        insert_rows(conn, "INSERT INTO point_chunks", 4, [row[:4] for row in sealed])
        insert_rows(conn, "INSERT INTO latest", 5, latest, LATEST_UPSERT)
        self.reset()

    def reset(self) -> None:
        self.runs.clear()
        self._left.clear()


def create(conn: sqlite3.Connection) -> None:
    """The table; a database of the one-row-a-point layout has its points moved into it (once)."""
    conn.executescript(SCHEMA)
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='points'").fetchone():
        return
    (count,) = conn.execute("SELECT count(*) FROM points").fetchone()
    log.info("store: moving %d points into chunks (once, for this version's layout)", count)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _move_points(conn)
        conn.execute("DROP TABLE points")
        conn.execute("COMMIT")
    except BaseException:  # all or nothing: the old table stays whole for the next open
        conn.execute("ROLLBACK")
        raise


def _move_points(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT key_id, step, event_id, value, ts FROM points ORDER BY 1, 2, 3")
    chunk: list[Any] = []
    where: tuple[int, int] | None = None
    out: list[tuple[Any, ...]] = []
    for key_id, step, event_id, value, ts in rows:
        if (key_id, step >> SHIFT) != where:
            if where is not None:
                out.append((*where, *pack(chunk)))
            where, chunk = (key_id, step >> SHIFT), []
        chunk += (step, event_id, value, ts)
        if len(out) >= 1024:
            insert_rows(conn, "INSERT INTO point_chunks", 4, out)
            out = []
    if where is not None:
        out.append((*where, *pack(chunk)))
    insert_rows(conn, "INSERT INTO point_chunks", 4, out)
