"""TensorBoard both ways: `SummaryWriter` (writer.py) streams what it writes; the tailer (tailer.py)
streams what any writer left in a log directory.

`SummaryWriter` is imported on first use: it needs torch, the tailer does not."""

from __future__ import annotations

from typing import Any

__all__ = ["SummaryWriter"]


def __getattr__(name: str) -> Any:
    if name == "SummaryWriter":
        from trainpilot.tensorboard.writer import SummaryWriter

        return SummaryWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
