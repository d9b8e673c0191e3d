"""TensorBoard both ways: `SummaryWriter` (writer.py) streams what it writes; the tailer (tailer.py)
streams what any writer left in a log directory, read by reader.py and eventfile.py.

`SummaryWriter` is imported on first use: it needs torch; reading needs nothing beyond trainpilot."""

from __future__ import annotations

from typing import Any

__all__ = ["SummaryWriter"]


def __getattr__(name: str) -> Any:
    if name == "SummaryWriter":
        from trainpilot.tensorboard.writer import SummaryWriter

        return SummaryWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
