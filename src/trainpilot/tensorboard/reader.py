"""Reading a TensorBoard log directory: which event files make which run, and the scalars and images
of their records. `read_logdir` reads a directory once (`trainpilot analyze ./runs`); the tailer
(tailer.py) follows one as it grows with the same pieces.

- A run is a directory holding event files. Keras/TF2 write ``<run>/train`` and ``<run>/validation``:
  those are folded into ``<run>`` with the sub-folder as a prefix (``train/epoch_loss``).
- Scalars come as ``simple_value`` (torch, tensorboardX) or as one-element tensors of the scalars
  plugin (TF2), whose plugin a writer names only in a tag's first record: `EventFile.plugins` keeps it.
- Files are found only inside the directory: symlinks that lead outside it are not followed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainpilot.tensorboard.eventfile import (
    AUDIO,
    HISTO,
    IMAGE,
    SIMPLE_VALUE,
    TENSOR,
    Event,
    decode_event,
    decode_tensor,
    image_bytes,
    read_record,
)

log = logging.getLogger("trainpilot.tensorboard.reader")
SPLIT_DIRS = frozenset({"train", "training", "validation", "val", "eval", "evaluation", "test"})
# Legacy values, and the plugin TensorBoard files them under (its data_compat).
_LEGACY_PLUGINS = {SIMPLE_VALUE: "scalars", IMAGE: "images", HISTO: "histograms", AUDIO: "audio"}


def event_files(root: Path) -> list[Path]:
    """The event files under `root` (resolved), in path order: their names carry their creation time."""
    found = []
    for dirpath, _dirs, names in os.walk(root):  # os.walk does not follow symlinked dirs
        for name in names:
            if "tfevents" not in name:
                continue
            path = Path(dirpath) / name
            try:
                real = path.resolve(strict=True)
            except OSError:
                continue
            if real.is_relative_to(root) and real.is_file():
                found.append(path)
    return sorted(found)


def run_of(rel: Path) -> tuple[str, str]:
    """(run key, metric prefix) of an event file's path relative to the log directory."""
    parts = rel.parent.parts
    if parts and parts[-1].lower() in SPLIT_DIRS:
        return "/".join(parts[:-1]) or ".", parts[-1] + "/"
    return "/".join(parts) or ".", ""


class EventFile:
    """One event file, read as it grows: each `read` yields the records completed since the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # where the next record starts
        self.records = 0  # records read so far
        self.plugins: dict[str, str] = {}  # tag -> plugin, from the tag's first record

    def read(self) -> Iterator[Event]:
        """Decoded records up to the end of the file, or up to one still being written or damaged (a
        later `read` tries it again). Raises ValueError for a record that is intact but not an Event."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while (record := read_record(f)) is not None:
                event = decode_event(record)
                self.offset = f.tell()
                self.records += 1
                yield event


def scalars(event: Event, plugins: dict[str, str]) -> dict[str, float]:
    """The scalar values of one record, by tag; notes each tag's plugin in `plugins`."""
    out: dict[str, float] = {}
    for value in event.values or ():
        plugin = _LEGACY_PLUGINS.get(value.kind, value.plugin)
        if plugin:
            plugins.setdefault(value.tag, plugin)
        if plugins.get(value.tag) != "scalars":
            continue
        if value.kind == SIMPLE_VALUE:
            out[value.tag] = value.simple_value
        elif value.kind == TENSOR and (number := decode_tensor(value.payload).scalar()) is not None:
            out[value.tag] = number
    return out


def images(event: Event, plugins: dict[str, str]) -> list[tuple[str, bytes]]:
    """The encoded images of one record (after `scalars` saw it): legacy image summaries, or the first
    image of a tensor of the images plugin (TF2), whose strings are width, height, images..."""
    out: list[tuple[str, bytes]] = []
    for value in event.values or ():
        if plugins.get(value.tag) != "images":
            continue
        if value.kind == IMAGE:
            out.append((value.tag, image_bytes(value.payload)))
        elif value.kind == TENSOR:
            out.extend((value.tag, blob) for blob in decode_tensor(value.payload).strings[2:3])
    return out


def read_logdir(logdir: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Every scalar under a log directory, as metrics events per run key (for offline analysis)."""
    root = Path(logdir).expanduser().resolve()
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in event_files(root):
        run_key, prefix = run_of(path.relative_to(root))
        file = EventFile(path)
        try:
            for event in file.read():
                values = scalars(event, file.plugins)
                if values:
                    data = {prefix + tag: value for tag, value in values.items()}
                    step = max(0, event.step)
                    runs.setdefault(run_key, []).append(
                        {"kind": "metrics", "step": step, "ts": event.wall_time, "data": data}
                    )
        except (OSError, ValueError) as exc:  # what was read before the damage counts
            log.warning("stopped reading %s: %s", path, exc)
    return runs
