"""Per-block summaries of a metric's points: what lets a history read the store has not answered
before touch blocks, not every point (SQLite; bench case 5).

A block is 64 consecutive steps of one metric (``step >> 6``). Its row keeps how many points it
holds and its lowest and highest point, each the earliest (step, event id) of its value, as
`downsample()` picks them. A bucket's extremes are then the extremes of its whole blocks'
summaries and of the points in the partial blocks at its two ends: per-column min/max of M4
(Jugel et al., VLDB 2014), with the latest point kept apart instead of first/last.

A metric's open block, the one its latest point is in, has no summary readers trust: they read its
points. The writer summarises the open block in memory as it stores its points and writes the row
in the transaction that leaves it (a metric's block changes once in 64 steps), so no summary that
readers use is ever behind what is committed (`Summaries`). Measured side by side (bench case 3):
merging each transaction's points into its blocks' rows cost the ingest of 8-point batches 15 % of
its rate, recomputing every block a transaction touched 30 %, recomputing each block from its
points once as it is left about 8 % of the store's own time per event; this costs 8-point batches
nothing measurable and the store's own time per event about 6 % (17.1 -> 18.1 µs).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Iterable
from typing import Any

from trainpilot.downsample import ordered
from trainpilot.events import Point
from trainpilot.store.statements import insert_rows

log = logging.getLogger("trainpilot.store")

SHIFT = 6
STEPS = 1 << SHIFT

SCHEMA = """
CREATE TABLE IF NOT EXISTS point_blocks(
    key_id INTEGER NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL,
    low REAL NOT NULL, low_step INTEGER NOT NULL, low_event INTEGER NOT NULL, low_ts REAL NOT NULL,
    high REAL NOT NULL, high_step INTEGER NOT NULL, high_event INTEGER NOT NULL, high_ts REAL NOT NULL,
    PRIMARY KEY(key_id, block)) WITHOUT ROWID;
"""
_IN_BLOCK = "FROM points WHERE key_id=?1 AND step BETWEEN ?3 AND ?4"
# One pass per extreme, no sort: with a single min() or max(), SQLite fills the bare columns from the
# first row holding it in index order (step, event id), the earliest of equal values (as history's).
REFRESH_SQL = f"""INSERT OR REPLACE INTO point_blocks
SELECT ?1, ?2, l.n, l.value, l.step, l.event_id, l.ts, h.value, h.step, h.event_id, h.ts FROM
    (SELECT count(*) AS n, min(value) AS value, step, event_id, ts {_IN_BLOCK}) AS l,
    (SELECT max(value) AS value, step, event_id, ts {_IN_BLOCK}) AS h"""

WRITE_HEAD = "INSERT OR REPLACE INTO point_blocks"  # 11 columns; a block written twice: the last row wins


# One bucket in one statement: the lowest and highest point (two rows, each with its part's count
# first: NULL or 0 for an empty part) of each of five parts in step order: the steps before its
# first whole block, whole blocks, the open block's steps, whole blocks, the steps after its last
# whole block. With a single min() or max() a statement's bare columns come from the first row
# holding it: the earliest of equal values, as downsample() keeps.
def _part(first: int, table: str) -> list[str]:
    if table == "points":
        where = f"FROM points WHERE key_id=?1 AND step BETWEEN ?{first} AND ?{first + 1}"
        return [f"SELECT count(*), {f}(value), step, ts, event_id {where}" for f in ("min", "max")]
    where = f"FROM point_blocks WHERE key_id=?1 AND block BETWEEN ?{first} AND ?{first + 1}"
    return [
        f"SELECT sum(count), min(low), low_step, low_ts, low_event {where}",
        f"SELECT sum(count), max(high), high_step, high_ts, high_event {where}",
    ]


BUCKET_SQL = " UNION ALL ".join(
    _part(2, "points") + _part(4, "blocks") + _part(6, "points") + _part(8, "blocks") + _part(10, "points")
)
EMPTY = (1, 0)


class Summaries:
    """The writer's side. Each metric's open block is summarised in memory as its points are stored
    (`open`: a row of point_blocks' columns, then whether it is complete) and written when the
    metric leaves it, with no scan. A summary is complete when the block was new territory, past
    every block the metric had points in; one entered again (a run resumed at an earlier step), or
    continued from before this process (a restart), is recomputed from its points instead."""

    def __init__(self) -> None:
        self.open: dict[int, list[Any]] = {}
        self._top: dict[int, int] = {}  # each metric's highest block with points, as this process knows
        self._done: list[list[Any]] = []
        self._stale: set[tuple[int, int]] = set()

    def enter(
        self,
        conn: sqlite3.Connection,
        key_id: int,
        block: int,
        value: float,
        step: int,
        event_id: int,
        ts: float,
    ) -> None:
        """A metric's point in another block than its open one (or its first in this process)."""
        left = self.open.get(key_id)
        if left is not None:
            if left[11]:
                self._done.append(left[:11])
            else:
                self._stale.add((key_id, left[1]))
        top = self._top.get(key_id)
        if top is None:  # first seen by this process: what is stored decides
            (highest,) = conn.execute("SELECT max(step) FROM points WHERE key_id=?", (key_id,)).fetchone()
            top = -1 if highest is None else highest >> SHIFT
            latest = conn.execute("SELECT step FROM latest WHERE key_id=?", (key_id,)).fetchone()
            if latest is not None:  # its block was open, never summarised, when that point was stored
                self._stale.add((key_id, latest[0] >> SHIFT))
        self._top[key_id] = max(top, block)
        point = (value, step, event_id, ts)
        self.open[key_id] = [key_id, block, 1, *point, *point, block > top]

    def write(self, conn: sqlite3.Connection) -> None:
        """The blocks the transaction left, before it commits (recomputed ones last: they win)."""
        if self._done:
            insert_rows(conn, WRITE_HEAD, 11, self._done)
            self._done.clear()
        if self._stale:
            refresh(conn, self._stale)
            self._stale.clear()

    def reset(self) -> None:
        """Forget everything (a transaction failed, or the writer starts): each metric is new again."""
        self.open.clear()
        self._top.clear()
        self._done.clear()
        self._stale.clear()


def refresh(conn: sqlite3.Connection, touched: Iterable[tuple[int, int]]) -> None:
    """Recompute the summaries of the (key id, block) pairs given, from their points."""
    conn.executemany(REFRESH_SQL, ((k, b, b << SHIFT, (b << SHIFT) + STEPS - 1) for k, b in touched))


def create(conn: sqlite3.Connection) -> None:
    """The table, and its rows for the points of a database made before it (once, at its first open)."""
    existed = conn.execute("SELECT 1 FROM sqlite_master WHERE name='point_blocks'").fetchone()
    conn.executescript(SCHEMA)
    if existed:
        return
    touched = conn.execute(f"SELECT DISTINCT key_id, step >> {SHIFT} FROM points").fetchall()
    if touched:
        log.info("store: summarising %d blocks of points for history reads (once)", len(touched))
        conn.execute("BEGIN IMMEDIATE")
        refresh(conn, touched)
        conn.execute("COMMIT")


class Extremes:
    """A bucket's count and its lowest and highest point so far, fed in step order."""

    def __init__(self) -> None:
        self.count = 0
        self.low: Point | None = None
        self.high: Point | None = None

    def add(self, count: int, low: Point, high: Point) -> None:
        """A part of the bucket after every part added before (strict comparisons: the earliest of
        equal values stays, as in `downsample()`)."""
        self.count += count
        if self.low is None or low.value < self.low.value:
            self.low = low
        if self.high is None or high.value > self.high.value:
            self.high = high

    def points(self) -> tuple[Point, ...]:
        if self.low is None or self.high is None:
            return ()
        return ordered(self.low, self.high)


def bucket(conn: sqlite3.Connection, key_id: int, first: int, last: int, open_block: int) -> Extremes:
    """Steps first..last of a metric: its whole blocks from their summaries, the rest from points
    (the open block, its latest point's, is summarised only once the metric leaves it)."""
    lo, hi = (first + STEPS - 1) >> SHIFT, ((last + 1) >> SHIFT) - 1
    if lo > hi:  # no whole block: every step from the points
        parts = ((first, last), EMPTY, EMPTY, EMPTY, EMPTY)
    elif lo <= open_block <= hi:
        opened = (open_block << SHIFT, ((open_block + 1) << SHIFT) - 1)
        parts = (
            (first, (lo << SHIFT) - 1),
            (lo, open_block - 1),
            opened,
            (open_block + 1, hi),
            ((hi + 1) << SHIFT, last),
        )
    else:
        parts = ((first, (lo << SHIFT) - 1), (lo, hi), EMPTY, EMPTY, ((hi + 1) << SHIFT, last))
    rows = conn.execute(BUCKET_SQL, (key_id, *itertools.chain.from_iterable(parts))).fetchall()
    found = Extremes()
    for low, high in zip(rows[::2], rows[1::2], strict=True):
        if low[0]:
            found.add(
                low[0], Point(low[2], low[1], low[3], low[4]), Point(high[2], high[1], high[3], high[4])
            )
    return found
