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

import logging
import sqlite3
from collections.abc import Iterable
from typing import Any

from trainpilot.downsample import ordered
from trainpilot.events import Point
from trainpilot.store import chunks
from trainpilot.store.chunks import SHIFT, STEPS, Extreme
from trainpilot.store.statements import insert_rows

log = logging.getLogger("trainpilot.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS point_blocks(
    key_id INTEGER NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL,
    low REAL NOT NULL, low_step INTEGER NOT NULL, low_event INTEGER NOT NULL, low_ts REAL NOT NULL,
    high REAL NOT NULL, high_step INTEGER NOT NULL, high_event INTEGER NOT NULL, high_ts REAL NOT NULL,
    PRIMARY KEY(key_id, block)) WITHOUT ROWID;
"""
WRITE_HEAD = "INSERT OR REPLACE INTO point_blocks"  # 11 columns; a block written twice: the last row wins


# A bucket's whole blocks from their summaries, in one statement: the lowest and highest (two rows,
# each with the count first: NULL for none). With a single min() or max() a statement's bare columns
# come from the first row holding it, in block order: the earliest of equal values, as downsample().
_WHERE = "FROM point_blocks WHERE key_id=? AND block BETWEEN ? AND ?"
WHOLE_SQL = (
    f"SELECT sum(count), min(low), low_step, low_ts, low_event {_WHERE} UNION ALL "
    f"SELECT sum(count), max(high), high_step, high_ts, high_event {_WHERE}"
)
SUMMARIES_SQL = (
    f"SELECT block, count, low, low_step, low_ts, low_event, high, high_step, high_ts, high_event {_WHERE}"
)


class Summaries:
    """The writer's side. Each metric's open block is summarised in memory as its chunks are stored
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
        """A metric entering another block than its open one (or its first in this process), with the
        point that opens its summary."""
        left = self.open.get(key_id)
        if left is not None:
            if left[11]:
                self._done.append(left[:11])
            else:
                self._stale.add((key_id, left[1]))
        top = self._top.get(key_id)
        if top is None:  # first seen by this process: what is stored decides
            top = chunks.top_block(conn, key_id)
            latest = conn.execute("SELECT step FROM latest WHERE key_id=?", (key_id,)).fetchone()
            if latest is not None:  # its block was open, never summarised, when that point was stored
                self._stale.add((key_id, latest[0] >> SHIFT))
        self._top[key_id] = max(top, block)
        point = (value, step, event_id, ts)
        self.open[key_id] = [key_id, block, 1, *point, *point, block > top]

    def add(
        self, conn: sqlite3.Connection, key_id: int, block: int, count: int, low: Extreme, high: Extreme
    ) -> None:
        """A chunk of a metric's points in one block, after every chunk of it added before (its ids are
        higher: a tie of value and step keeps the earlier point)."""
        part = self.open.get(key_id)
        if part is None or part[1] != block:
            self.enter(conn, key_id, block, *low)
            part = self.open[key_id]
            part[2] = count
            part[7:11] = high
            return
        part[2] += count
        if low[0] < part[3] or (low[0] == part[3] and low[1] < part[4]):
            part[3:7] = low
        if high[0] > part[7] or (high[0] == part[7] and high[1] < part[8]):
            part[7:11] = high

    def write(self, conn: sqlite3.Connection, pending: chunks.Pending) -> None:
        """The transaction's points (their chunks' summaries taken first, before the chunks are in the
        table a first look at a metric reads), then the blocks it left, before it commits
        (recomputed ones last: they read the points, and win)."""
        sealed = pending.sealed()
        for key_id, block, count, _, low, high in sealed:
            self.add(conn, key_id, block, count, low, high)
        pending.write(conn, sealed)
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
    rows = []
    for key_id, block in touched:
        for _, points in chunks.blocks(conn, key_id, block, block):
            found = points.extremes(block << SHIFT, (block << SHIFT) + STEPS - 1)
            if found is not None:
                count, low, high = found
                rows.append((key_id, block, count, *summary(low), *summary(high)))
    insert_rows(conn, WRITE_HEAD, 11, rows)


def summary(point: Point) -> tuple[float, int, int, float]:
    """A point as point_blocks' columns hold it: value, step, event id, ts."""
    return point.value, point.step, point.event_id, point.ts


def _point(value: float, step: int, ts: float, event_id: int) -> Point:
    """A summary's point as the reads select it: value, step, ts, event id."""
    return Point(step, value, ts, event_id)


def create(conn: sqlite3.Connection) -> None:
    """The table, and its rows for the points of a database made before it (once, at its first open)."""
    existed = conn.execute("SELECT 1 FROM sqlite_master WHERE name='point_blocks'").fetchone()
    conn.executescript(SCHEMA)
    if existed:
        return
    touched = conn.execute("SELECT DISTINCT key_id, block FROM point_chunks").fetchall()
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

    def take(self, block: chunks.Block | None, first: int, last: int) -> None:
        """Steps first..last of a decoded block (None: a block with no points)."""
        if block is not None and (found := block.extremes(first, last)) is not None:
            self.add(*found)

    def summaries(self, low: tuple[Any, ...], high: tuple[Any, ...]) -> None:
        """Whole blocks' summaries: WHOLE_SQL's two rows of one part (count first, NULL for none)."""
        if low[0]:
            self.add(low[0], _point(*low[1:5]), _point(*high[1:5]))

    def points(self) -> tuple[Point, ...]:
        if self.low is None or self.high is None:
            return ()
        return ordered(self.low, self.high)


class Whole:
    """The summaries of a metric's whole blocks, as buckets ask for them. Where buckets are few blocks
    wide (a range of up to a few blocks a bucket) every summary in the range is read in one statement;
    where they are wide, SQLite aggregates each bucket's in its own (bench case 5 reads both)."""

    DENSE = 4  # blocks a bucket, at most, to read the summaries of the whole range at once

    def __init__(self, conn: sqlite3.Connection, key_id: int, lo: int, hi: int, buckets: int) -> None:
        self.conn, self.key_id = conn, key_id
        self.read: dict[int, tuple[int, Point, Point]] | None = None
        if hi - lo + 1 <= self.DENSE * buckets:
            self.read = {
                r[0]: (r[1], _point(*r[2:6]), _point(*r[6:10]))
                for r in conn.execute(SUMMARIES_SQL, (key_id, lo, hi))
            }

    def add(self, found: Extremes, lo: int, hi: int) -> None:
        """Blocks lo..hi into `found`, in block order."""
        if lo > hi:
            return
        if self.read is None:
            low, high = self.conn.execute(WHOLE_SQL, (self.key_id, lo, hi) * 2).fetchall()
            found.summaries(low, high)
            return
        read = self.read
        for block in range(lo, hi + 1):
            if (part := read.get(block)) is not None:
                found.add(*part)


def extremes(
    conn: sqlite3.Connection, key_id: int, first: int, last: int, width: int, open_block: int
) -> tuple[list[Point], int]:
    """Each `width`-step bucket's lowest and highest point from step `first` to `last`, in step order,
    and how many points there are. A bucket's whole blocks come from their summaries (`Whole`); the
    blocks its two ends cut and the metric's open block (its latest point's, summarised only once the
    metric leaves it) from their points, all read in one statement and each decoded once (a block cut
    by a bucket's end is the next bucket's start)."""
    spans = [(start, min(start + width - 1, last)) for start in range(first, last + 1, width)]
    cut: set[int] = set()
    for start, end in spans:
        if (start + STEPS - 1) >> SHIFT > ((end + 1) >> SHIFT) - 1:  # no whole block
            cut.update(range(start >> SHIFT, (end >> SHIFT) + 1))
            continue
        if start & (STEPS - 1):
            cut.add(start >> SHIFT)
        if (end + 1) & (STEPS - 1):
            cut.add(end >> SHIFT)
    if (first >> SHIFT) <= open_block <= (last >> SHIFT):
        cut.add(open_block)
    read = chunks.chosen(conn, key_id, sorted(cut))
    whole = Whole(conn, key_id, first >> SHIFT, last >> SHIFT, len(spans))
    points: list[Point] = []
    total = 0
    for start, end in spans:
        found = bucket(start, end, open_block, read, whole)
        total += found.count
        points.extend(found.points())
    return points, total


def bucket(first: int, last: int, open_block: int, read: dict[int, chunks.Block], whole: Whole) -> Extremes:
    """Steps first..last of a metric: its whole blocks from their summaries, the rest from `read`,
    its decoded blocks, in step order (the open block is summarised only once the metric leaves it)."""
    lo, hi = (first + STEPS - 1) >> SHIFT, ((last + 1) >> SHIFT) - 1
    found = Extremes()
    if lo > hi:  # no whole block: every step from the points
        for block in range(first >> SHIFT, (last >> SHIFT) + 1):
            found.take(read.get(block), first, last)
        return found
    found.take(read.get(first >> SHIFT), first, (lo << SHIFT) - 1)
    if lo <= open_block <= hi:
        whole.add(found, lo, open_block - 1)
        found.take(read.get(open_block), open_block << SHIFT, ((open_block + 1) << SHIFT) - 1)
        whole.add(found, open_block + 1, hi)
    else:
        whole.add(found, lo, hi)
    found.take(read.get(last >> SHIFT), (hi + 1) << SHIFT, last)
    return found
