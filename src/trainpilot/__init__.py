"""trainpilot: observe, control and explain computer-vision training while it runs.

>>> import trainpilot
>>> run = trainpilot.init(project="digits", server="http://127.0.0.1:8765")  # doctest: +SKIP
>>> run.log({"train/loss": 0.41, "lr": 0.05})                               # doctest: +SKIP
>>> run.finish()                                                              # doctest: +SKIP
"""

from __future__ import annotations

from trainpilot.exceptions import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    TrainpilotError,
    TransportError,
)
from trainpilot.sdk.run import Run, init
from trainpilot.version import __version__

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
