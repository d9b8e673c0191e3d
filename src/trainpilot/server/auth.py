"""Access scopes: once a token is configured, reads need a token and changes need the write token.

Two scopes: ``read`` (GET, SSE, WebSocket subscribe) and ``write`` (create, ingest, control; it
includes read). `TRAINPILOT_TOKEN` is the write token, `TRAINPILOT_READ_TOKEN` an optional read-only
one. Tokens come as ``Authorization: Bearer <token>`` or ``X-Trainpilot-Token``. A browser's
EventSource (and WebSocket) cannot set headers, so `POST /api/auth/stream-token` trades a token for a
short-lived, HMAC-signed read token to put in the URL (``?access_token=``): a URL that leaks (a
proxy's log, the browser's history) grants reading for minutes, not the token itself. Comparisons
are constant-time and no token is ever logged. Without any token configured (loopback only) all is
open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Literal

from trainpilot.server.errors import HTTPError
from trainpilot.settings import Settings

Scope = Literal["read", "write"]
QUERY_TOKEN_TTL_S = 300
HOW = "send 'Authorization: Bearer <token>' (TRAINPILOT_TOKEN, or TRAINPILOT_READ_TOKEN for reading)"


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        lower = name.lower()
        if lower == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
        if lower == b"x-trainpilot-token":
            return value.decode("latin-1").strip()
    return None


def protected(settings: Settings) -> bool:
    return bool(settings.token or settings.read_token)


def granted(settings: Settings, presented: str | None, query_token: str | None = None) -> Scope | None:
    """The scope the caller holds: from its token, else from a signed query token."""
    if presented is not None:
        if settings.token and _same(presented, settings.token):
            return "write"
        if settings.read_token and _same(presented, settings.read_token):
            return "read"
    if query_token is not None and _verify(settings, query_token):
        return "read"
    return None


def check(settings: Settings, need: Scope, presented: str | None, query_token: str | None = None) -> None:
    """Raise 401 (no valid token) or 403 (a read token for a change) unless the caller may do this."""
    if not protected(settings):
        return
    scope = granted(settings, presented, query_token)
    if scope is None:
        raise HTTPError(401, "unauthorized", f"this server needs a token: {HOW}")
    if need == "write" and scope != "write":
        raise HTTPError(403, "forbidden", "a read token cannot change anything: use the write token")


def mint_query_token(settings: Settings, now: float | None = None) -> tuple[str, int]:
    """A read token for URLs, valid `QUERY_TOKEN_TTL_S` seconds, and when it expires (epoch s)."""
    expires = int((time.time() if now is None else now) + QUERY_TOKEN_TTL_S)
    payload = f"read.{expires}"
    return f"{payload}.{_sign(settings, payload)}", expires


def _verify(settings: Settings, token: str) -> bool:
    scope, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    if scope != "read" or not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature.encode(), _sign(settings, f"read.{expires}").encode())


def _sign(settings: Settings, payload: str) -> str:
    # Keyed by the configured tokens, so every replica sharing them accepts each other's query tokens,
    # and changing a token revokes every query token minted with the old one.
    secret = hashlib.sha256(f"trainpilot query token\0{settings.token}\0{settings.read_token}".encode())
    digest = hmac.new(secret.digest(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
