"""The SDK's spool: batches the server could not take yet, on disk, in order, until they are sent.

One file per run under ``<data_dir>/spool/``; each line is one self-contained batch (the run's
create request and its events), so a spool left behind by a process that died can be replayed by
the next one. A file has one owner at a time, the process holding its exclusive `flock`: a run's
sender claims ``<run>.jsonl`` when the run starts, so a run resumed by a new process (same id) takes
over what its dead predecessor left there, in order, and spools behind it; if a live process holds
that file, the sender takes the next free name (``<run>~2.jsonl``...). Files no live process holds are
orphans, which the next process on the data dir replays. Re-sending is safe: the server drops events
whose (run, seq) it already has.

A spool has a disk budget (`TRAINPILOT_SPOOL_MAX_MB`, default 1024 MiB a run). Past it, the oldest
unsent batches are dropped — counted and logged, never a crash — and the newest half of the budget
kept: after a long outage the recent state of the run matters most, and the disk must not fill up.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("trainpilot")


def budget() -> int:
    """The disk budget of one run's spool, in bytes: TRAINPILOT_SPOOL_MAX_MB (default 1024)."""
    return int(float(os.environ.get("TRAINPILOT_SPOOL_MAX_MB") or 1024) * 2**20)


class Spool:
    def __init__(self, path: Path, max_bytes: int | None = None, *, own: bool = False) -> None:
        self.path = path
        self._own = own  # a run's own spool moves to a free name when a live process holds this one
        self.max_bytes = max_bytes or budget()
        self._file: IO[bytes] | None = None
        self._read_offset = 0  # everything before it is delivered
        self._size = 0  # of the file; what lies between the two is still to send
        self.dropped_events = 0
        self._warned_at = -math.inf

    @classmethod
    def for_run(cls, data_dir: str | os.PathLike[str], run_id: str, rank: int = 0) -> Spool:
        """The run's spool; under torchrun each rank has its own (one file, one owner)."""
        name = f"{run_id}.jsonl" if rank == 0 else f"{run_id}.rank{rank}.jsonl"
        return cls(Path(data_dir) / "spool" / name, own=True)

    def claim(self) -> None:
        """Take the file now, at the run's start: before the next process's orphan replayer could, and
        with whatever an earlier process of this run left in it pending, to be sent first."""
        try:
            self._open()
        except OSError as exc:
            log.warning("trainpilot: cannot open the spool %s (%s); training continues", self.path, exc)

    def _open(self) -> IO[bytes]:
        if self._file is None:
            f, first, n = _locked(self.path), self.path, 1
            while f is None and self._own:
                n += 1
                self.path = first.with_name(f"{first.stem}~{n}.jsonl")
                f = _locked(self.path)
            if f is None:
                raise BlockingIOError(f"{self.path} is held by a live process")
            size = f.seek(0, os.SEEK_END)
            if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                f.write(b"\n")  # a line cut short by a crash must not swallow the next batch
                f.flush()
                size += 1
            self._file, self._size = f, size
        return self._file

    def append(self, batch: dict[str, Any]) -> None:
        line = orjson.dumps(batch) + b"\n"
        events = batch.get("events")
        if len(line) > self.max_bytes // 8 and isinstance(events, list) and len(events) > 1:
            half = len(events) // 2  # small lines, so that the budget drops a little at a time
            self.append({**batch, "events": events[:half]})
            self.append({**batch, "events": events[half:]})
            return
        f = self._open()
        f.write(line)
        f.flush()
        self._size += len(line)
        if self._size > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Keep the newest unsent batches that fit in half the budget; drop the rest, and say so.

        The kept tail is copied to the front of the file in place. It comes from the far end of a file
        at least twice its size, so a crash midway leaves every kept batch whole where it was (and at
        worst some dropped ones too, which the server would store once).
        """
        f = self._open()
        f.flush()
        keep_from = max(self._read_offset, self._size - self.max_bytes // 2)
        tail = os.pread(f.fileno(), self._size - keep_from, keep_from)
        cut = 0 if keep_from == self._read_offset else tail.find(b"\n") + 1  # start at a whole batch
        tail = tail[cut:]
        dropped = os.pread(f.fileno(), keep_from + cut - self._read_offset, self._read_offset)
        batches, events = _count(dropped)
        with open(self.path, "r+b") as rewrite:  # not `f`: in append mode every write lands at the end
            rewrite.write(tail)
            rewrite.truncate(len(tail))
        self._size, self._read_offset = len(tail), 0
        self.dropped_events += events
        if batches and time.monotonic() - self._warned_at > 60:  # once a minute, not once a batch
            self._warned_at = time.monotonic()
            log.warning(
                "trainpilot: spool %s reached its disk budget (%.3g MiB, TRAINPILOT_SPOOL_MAX_MB): "
                "dropped its %d oldest unsent batches (%d events so far); training goes on",
                self.path,
                self.max_bytes / 2**20,
                batches,
                self.dropped_events,
            )

    def __bool__(self) -> bool:
        """Whether anything is left to send: bytes, not a count, so a spool another process left is
        pending as soon as it is opened, however many batches it holds."""
        return self._read_offset < self._size

    def pending(self) -> Iterator[tuple[dict[str, Any], int]]:
        """Unsent batches in order, each with the offset to `commit` once it is delivered.

        A line that does not decode (one cut short by a crash) is passed over for good once everything
        before it is committed, so it never keeps the spool from emptying.
        """
        self._open()
        end = self._read_offset
        with open(self.path, "rb") as reader:
            reader.seek(end)
            for line in reader:
                start, end = end, end + len(line)
                batch = _decode(line)
                if batch is not None:
                    yield batch, end
                elif self._read_offset == start:
                    self.commit(end)

    def commit(self, offset: int) -> None:
        """Everything up to `offset` was delivered; an empty spool is truncated."""
        self._read_offset = offset
        if offset >= self._size:
            self._open().truncate(0)
            self._read_offset = self._size = 0

    def close(self) -> None:
        if self._file is not None:
            if self._file.seek(0, os.SEEK_END) == 0:
                with contextlib.suppress(OSError):
                    self.path.unlink()  # still locked: whoever opened it meanwhile finds it gone (_locked)
            self._file.close()
            self._file = None


def _locked(path: Path) -> IO[bytes] | None:
    """`path` opened for appending under our exclusive lock; None while a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+b")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        except OSError:
            f.close()
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        f.close()  # its owner emptied and removed it between our open and our lock: open the new one


def orphans(data_dir: str | os.PathLike[str]) -> Iterator[Spool]:
    """Spools left by processes that are gone (their lock is free), ready to replay."""
    folder = Path(data_dir) / "spool"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        spool = Spool(path)
        try:
            spool._open()
        except OSError:  # BlockingIOError: a live process holds it
            continue
        yield spool


def _decode(line: bytes) -> dict[str, Any] | None:
    """One spool line's batch; None for a line that is not one (cut short, or damaged on disk)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        batch = orjson.loads(line)
        if isinstance(batch, dict):
            return batch
    return None


def _count(lines: bytes) -> tuple[int, int]:
    """Batches, and the events in them, in a run of spool lines."""
    batches = events = 0
    for line in lines.splitlines():
        batch = _decode(line)
        if batch is not None:
            batches += 1
            events += len(batch.get("events") or []) or (1 if "media" in batch else 0)
    return batches, events
