"""Errors trainpilot raises.

TrainpilotError
├── ConfigError            a setting, URL or flag that cannot work
│   └── MissingExtra       an optional dependency is not installed; the message names the extra
├── NotFound               a run (or other thing) that does not exist
├── InvalidInput           input that breaks the contract; `field` names what is wrong
├── Conflict               a valid request the current state refuses (e.g. control of a finished run)
├── StoreUnavailable       the store cannot write now (disk full, read-only); nothing was stored
└── TransportError         a call to the server failed; its HTTP `status` and error `code` say whether
                           to retry (the SDK spools and retries, never raises this into the training
                           loop; the CLI and the MCP tools report it in one line)
"""

from __future__ import annotations


class TrainpilotError(Exception):
    """Base of every trainpilot error."""


class ConfigError(TrainpilotError):
    """A setting that cannot work, with a message saying how to fix it."""


class MissingExtra(ConfigError):
    """A feature's optional dependency is missing: ``trainpilot train needs PyTorch: pip install
    'trainpilot[train]'``. `extra` is the extra to install (extras.py)."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


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
    """A call to the server failed (`client.rest.http_error` words it): the server's HTTP `status` and
    error `code`, or None for both when no answer came (the server is away). What they say, not the
    message's wording, decides what the SDK's sender does with a batch."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def refused(self) -> bool:
        """The server refused what was sent (400, 413, 422): sending it again cannot help; drop it."""
        return self.status in (400, 413, 422)

    @property
    def token_refused(self) -> bool:
        """No token, a wrong or expired one, or a read-only one (401, 403): keep the batch for later."""
        return self.status in (401, 403)

    @property
    def run_not_found(self) -> bool:
        """The server does not know the run (it lost its store, or never saw the create): create it again."""
        return self.status == 404 and self.code == "not_found"
