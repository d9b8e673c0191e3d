"""GET /api/stream/metrics: the Server-Sent-Events stream, as a plain ASGI endpoint.

It sits in front of FastAPI's middleware on purpose: the broker writes to every subscriber's
`send` directly (DESIGN.md, fan-out), and each middleware layer would add a coroutine per write.
Frames are named by kind, carry the event id as ``id:``, and resume from ``Last-Event-ID`` (or
``?after=``) with no gap and no duplicate. Without either, the stream starts at the live head.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs

from trainpilot.broker import Filter, Subscriber
from trainpilot.events import KINDS
from trainpilot.exceptions import InvalidInput
from trainpilot.server.auth import check, presented_token
from trainpilot.server.errors import HTTPError, error_response
from trainpilot.server.hub import Hub

PATH = "/api/stream/metrics"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def parse_filter(run_ids: list[str], kinds: list[str], keys: list[str]) -> Filter:
    """A subscriber filter from (possibly comma-separated) lists; empty means everything."""

    def split(values: list[str]) -> frozenset[str] | None:
        items = {part for v in values for part in v.split(",") if part}
        return frozenset(items) if items else None

    wanted = split(kinds)
    if wanted is not None and not wanted <= KINDS:
        raise InvalidInput("kinds", f"unknown kinds {sorted(wanted - KINDS)}; use {sorted(KINDS)}")
    flt = Filter(run_ids=split(run_ids), kinds=wanted, keys=split(keys))
    # Thousands of subscribers share a handful of filters: one copy each, not one per connection.
    return _FILTERS.setdefault(flt, flt) if len(_FILTERS) < 1024 else flt


_FILTERS: dict[Filter, Filter] = {}


def parse_cursor(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise InvalidInput(field, "must be a non-negative integer event id")


async def stream(hub: Hub, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await error_response(405, "method_not_allowed", "use GET")(scope, receive, send)
        return
    try:
        flt, after = _request(hub, scope)
    except HTTPError as exc:
        await error_response(exc.status, exc.code, exc.message)(scope, receive, send)
        return
    except InvalidInput as exc:
        await error_response(400, "invalid_input", str(exc), exc.field)(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"retry: 2000\n: connected\n\n", "more_body": True})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    sub = Subscriber(send, "sse", flt, hub.broker.head if after is None else after)
    watcher = asyncio.create_task(_watch_disconnect(receive, sub))
    try:
        await hub.broker.serve(sub)
    finally:
        watcher.cancel()
    if sub.done.result() not in ("resync", "disconnected"):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}), 1.0)


def _request(hub: Hub, scope: dict[str, Any]) -> tuple[Filter, int | None]:
    """Check the token, read the filter and the cursor (a function of its own so that the parsed
    query does not stay alive, per connection, in the frame of the endless stream)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    check(hub.settings, "read", presented_token(scope["headers"]), query.get("access_token", [None])[-1])
    flt = parse_filter(query.get("run_id", []), query.get("kinds", []), query.get("keys", []))
    last_event_id = next(
        (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"last-event-id"), None
    )
    header_cursor = parse_cursor(last_event_id, "Last-Event-ID")
    if header_cursor is not None:
        return flt, header_cursor
    return flt, parse_cursor(query.get("after", [None])[-1], "after")


async def _watch_disconnect(receive: Any, sub: Subscriber) -> None:
    """The only task a subscriber owns: it learns of the client going away."""
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.finish("disconnected")
