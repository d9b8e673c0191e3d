"""WAL checkpoints on a thread of their own, so the SQLite writer's commits never wait for them.

SQLite checkpoints a WAL database from the connection whose commit passes `wal_autocheckpoint`
pages: copying the WAL's pages into the database file (and, with `synchronous=NORMAL`, syncing
both) inside that commit. Under ingest load that was the writer thread's commit every few batches
(side-by-side runs of bench case 3's 4 x 800 row without / with this thread: 217-222k / 235-248k
points/s). Here a thread of its own runs a PASSIVE checkpoint, which
never blocks the writer or a reader, every `INTERVAL_S` while there were commits. The writer keeps
a high `wal_autocheckpoint` as a safety net: should this thread fall behind, the WAL stays bounded.
A checkpoint only copies committed pages, so what a commit made durable stays so.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("trainpilot.store")
INTERVAL_S = 0.2
WRITER_AUTOCHECKPOINT = 20_000  # pages (80 MB of WAL): the writer checkpoints itself past this


class Checkpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._committed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainpilot-sqlite-checkpoints", daemon=True)
        self.stats = {"checkpoints": 0, "pages": 0}

    def start(self) -> None:
        self._thread.start()

    def committed(self) -> None:
        """The writer committed: the next round has something to copy."""
        self._committed.set()

    def _loop(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.wait(INTERVAL_S):
                if not self._committed.is_set():
                    continue
                self._committed.clear()
                try:
                    _, _, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # the writer's own checkpoints still bound the WAL
                    log.warning("store: a WAL checkpoint failed: %s", exc)
                    continue
                self.stats["checkpoints"] += 1
                self.stats["pages"] += max(copied, 0)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
