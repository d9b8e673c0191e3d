"""The SDK's spool: batches the server could not take yet, on disk, in order, until they are sent.

One file per run under ``<data_dir>/spool/``; each line is one self-contained batch (the run's
create request and its events), so a spool left behind by a process that died can be replayed by
the next one. The owner holds an exclusive `flock` on its file, so two live processes never replay
the same spool. Re-sending is safe: the server drops events whose (run, seq) it already has.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._read_offset = 0
        self.pending_batches = 0

    @classmethod
    def for_run(cls, data_dir: str | os.PathLike[str], run_id: str) -> Spool:
        return cls(Path(data_dir) / "spool" / f"{run_id}.jsonl")

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+b")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise
            size = f.seek(0, os.SEEK_END)
            if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                f.write(b"\n")  # a line cut short by a crash must not swallow the next batch
            self._file = f
        return self._file

    def append(self, batch: dict[str, Any]) -> None:
        f = self._open()
        f.write(orjson.dumps(batch) + b"\n")
        f.flush()
        self.pending_batches += 1

    def __bool__(self) -> bool:
        return self.pending_batches > 0

    def pending(self) -> Iterator[tuple[dict[str, Any], int]]:
        """Unsent batches in order, each with the offset to `commit` once it is delivered."""
        self._open()
        end = self._read_offset
        with open(self.path, "rb") as reader:
            reader.seek(end)
            for line in reader:
                end += len(line)
                with contextlib.suppress(orjson.JSONDecodeError):
                    batch = orjson.loads(line)
                    if isinstance(batch, dict):
                        yield batch, end

    def commit(self, offset: int) -> None:
        """Everything up to `offset` was delivered; an empty spool is truncated."""
        self._read_offset = offset
        self.pending_batches = max(0, self.pending_batches - 1)
        f = self._open()
        if offset >= f.seek(0, os.SEEK_END):
            f.truncate(0)
            self._read_offset = 0
            self.pending_batches = 0

    def close(self) -> None:
        if self._file is not None:
            empty = self._file.seek(0, os.SEEK_END) == 0
            self._file.close()
            self._file = None
            if empty:
                with contextlib.suppress(OSError):
                    self.path.unlink()


def orphans(data_dir: str | os.PathLike[str]) -> Iterator[Spool]:
    """Spools left by processes that are gone (their lock is free), ready to replay."""
    folder = Path(data_dir) / "spool"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        spool = Spool(path)
        try:
            f = spool._open()
        except (BlockingIOError, OSError):
            continue
        spool.pending_batches = sum(1 for _ in f)
        f.seek(0)
        yield spool
