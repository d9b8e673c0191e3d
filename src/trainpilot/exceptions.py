"""Errors trainpilot raises.

TrainpilotError
├── ConfigError            a setting, URL or flag that cannot work
├── NotFound               a run (or other thing) that does not exist
├── InvalidInput           input that breaks the contract; `field` names what is wrong
├── Conflict               a valid request the current state refuses (e.g. control of a finished run)
├── StoreUnavailable       the store cannot write now (disk full, read-only); nothing was stored
└── TransportError         the SDK could not reach the server (the SDK spools and retries, never raises
                           this into the training loop)
"""

from __future__ import annotations


class TrainpilotError(Exception):
    """Base of every trainpilot error."""


class ConfigError(TrainpilotError):
    """A setting that cannot work, with a message saying how to fix it."""


class NotFound(TrainpilotError):
    """The named thing does not exist."""


class InvalidInput(TrainpilotError):
    """Input that breaks the contract. `field` is a dotted path to the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(TrainpilotError):
    """A valid request that the current state refuses."""


class StoreUnavailable(TrainpilotError):
    """The store could not write; the batch was rolled back and may be sent again."""


class TransportError(TrainpilotError):
    """The SDK could not deliver a batch; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
