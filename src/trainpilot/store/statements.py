"""Many rows into a SQLite table in few statements: the embedded store's writes under load."""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any

ROWS_PER_STATEMENT = 1024


@functools.cache
def _values_sql(head: str, width: int, rows: int, tail: str) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * rows)}{tail}"


def insert_rows(conn: sqlite3.Connection, head: str, width: int, rows: Sequence[Any], tail: str = "") -> None:
    """`head` VALUES (one tuple of `width` per row) `tail`, in as few statements as possible.

    `executemany` steps SQLite once per row, and each step lets go of the GIL and takes it back: with
    the event loop busy on the other thread every retake waits for it (up to its switch interval),
    so under load the writer spent most of its time waiting. One statement of many rows steps once.
    Statement sizes are powers of two (at most ROWS_PER_STATEMENT rows and SQLite's variable limit),
    so a few cached statements serve every batch size.
    """
    most = min(ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    most = 1 << (most.bit_length() - 1)
    done, count = 0, len(rows)
    while done < count:
        size = min(most, 1 << ((count - done).bit_length() - 1))
        part = rows[done : done + size]
        conn.execute(_values_sql(head, width, size, tail), list(itertools.chain.from_iterable(part)))
        done += size
