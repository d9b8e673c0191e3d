"""What every endpoint module reads off a request: the Hub, the caller's scope, the body, the query.

The endpoint modules (rest.py, media.py, sse.py, ws.py) are siblings that never import each other;
what they share lives here and in params.py. FastAPI routes get the Hub from the app's state; the
plain ASGI endpoints (sse.py, ws.py) are handed it by the dispatcher (app.py) and read the raw scope.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import Depends, Request
from starlette.types import Scope

from trainpilot.server.auth import check, presented_token
from trainpilot.server.errors import HTTPError
from trainpilot.server.hub import Hub


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def require_read(request: Request) -> None:
    check(hub_of(request).settings, "read", presented_token(request.scope["headers"]))


def require_write(request: Request) -> None:
    check(hub_of(request).settings, "write", presented_token(request.scope["headers"]))


READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


def query_of(scope: Scope) -> dict[str, list[str]]:
    """The query string's parameters, each with every value given."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def header_of(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), as sent."""
    return next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == name), None)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes with 413 before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, "too_large", f"body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, "too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """A body as JSON, or a 400 naming what is wrong with it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, "bad_json", f"body is not valid UTF-8 JSON: {exc}") from None
