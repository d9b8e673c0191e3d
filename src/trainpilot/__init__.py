"""trainpilot: observe, control and explain computer-vision training while it runs.

>>> import trainpilot
>>> run = trainpilot.init(project="digits", server="http://127.0.0.1:8765")  # doctest: +SKIP
>>> run.log({"train/loss": 0.41, "lr": 0.05})                               # doctest: +SKIP
>>> run.finish()                                                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainpilot.exceptions import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    TrainpilotError,
    TransportError,
)
from trainpilot.version import __version__

if TYPE_CHECKING:
    from trainpilot.sdk.run import Run, init


def __getattr__(name: str) -> Any:
    """`init` and `Run` load the SDK on first use, so the server's analysis process does not."""
    if name in ("Run", "init"):
        from trainpilot.sdk import run

        return getattr(run, name)
    raise AttributeError(f"module 'trainpilot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "Run",
    "StoreUnavailable",
    "TrainpilotError",
    "TransportError",
    "__version__",
    "init",
]
