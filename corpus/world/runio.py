"""Reading what a framework wrote and writing the corpus's run files.

Where a framework writes TensorBoard files, they are read back with trainpilot's own reader
(`trainpilot.tensorboard.reader.read_logdir`), so names are exactly what a user's log shows, ``train/`` and
``validation/`` sub-folders included. Every record of one step is merged into one line; NaN and
infinities become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so that JSON carries them.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def encode(value: float) -> float | str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def decode(value: float | str) -> float:
    return float(value)


def merge(events: Iterable[Event]) -> list[Event]:
    """One event per step, in step order; of two values of one tag at one step the later wins."""
    by_step: dict[int, Event] = {}
    for e in events:
        slot = by_step.setdefault(
            int(e["step"]), {"kind": "metrics", "step": int(e["step"]), "ts": e["ts"], "data": {}}
        )
        slot["ts"] = max(slot["ts"], e["ts"])
        slot["data"].update({k: float(v) for k, v in e["data"].items()})
    return [by_step[s] for s in sorted(by_step)]


def from_logdir(logdir: str | os.PathLike[str]) -> list[Event]:
    """Every scalar of a TensorBoard log directory (all its runs folded into one), merged by step."""
    from trainpilot.tensorboard.reader import read_logdir

    runs = read_logdir(logdir)
    return merge(e for events in runs.values() for e in events)


def from_rows(
    rows: Iterable[dict[str, Any]], step_key: str, ts: float, skip: tuple[str, ...] = ()
) -> list[Event]:
    """Rows of a CSV log (Keras CSVLogger, timm summary.csv, Ultralytics results.csv) as events."""
    out = []
    for row in rows:
        data = {k.strip(): float(v) for k, v in row.items() if k.strip() not in skip and v not in ("", None)}
        out.append({"kind": "metrics", "step": int(float(row[step_key])), "ts": ts, "data": data})
    return merge(out)


def write(path: Path, events: list[Event]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for e in events:
            data = {k: encode(float(v)) for k, v in e["data"].items()}
            f.write(
                json.dumps({"kind": "metrics", "step": e["step"], "ts": round(e["ts"], 3), "data": data})
                + "\n"
            )


def read(path: Path) -> list[Event]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def series(events: list[Event], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, NaN strings decoded."""
    steps, values = [], []
    for e in events:
        if name in e["data"]:
            steps.append(e["step"])
            values.append(decode(e["data"][name]))
    return steps, values
