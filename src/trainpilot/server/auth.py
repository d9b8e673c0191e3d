"""Write access: once a token is configured, anything that changes state must present it.

Tokens come as ``Authorization: Bearer <token>`` or ``X-Trainpilot-Token``; comparison is
constant-time and the token is never logged. Reads stay open in this version (see docs/api.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from trainpilot.server.errors import HTTPError


def presented_token(headers: Iterable[tuple[bytes, bytes]], query_token: str | None = None) -> str | None:
    for name, value in headers:
        lower = name.lower()
        if lower == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
        if lower == b"x-trainpilot-token":
            return value.decode("latin-1").strip()
    return query_token


def check_write(expected: str | None, presented: str | None) -> None:
    """Raise 401 unless no token is configured or the presented one matches."""
    if expected is None:
        return
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HTTPError(
            401,
            "unauthorized",
            "this server needs a token for changes: send "
            "'Authorization: Bearer <token>' (the token the server was started with)",
        )
