"""GET /api/stream/metrics: the Server-Sent-Events stream, as a plain ASGI endpoint.

It sits in front of FastAPI's middleware on purpose: the broker writes to every subscriber's
`send` directly (DESIGN.md, fan-out), and each middleware layer would add a coroutine per write.
Frames are named by kind, carry the event id as ``id:``, and resume from ``Last-Event-ID`` (or
``?after=``) with no gap and no duplicate. Without either, the stream starts at the live head.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import Receive, Scope, Send

from trainpilot.broker import Filter, Subscriber
from trainpilot.exceptions import InvalidInput
from trainpilot.server.auth import check, presented_token
from trainpilot.server.errors import HTTPError, error_response
from trainpilot.server.http import header_of, query_of
from trainpilot.server.hub import Hub
from trainpilot.server.params import parse_filter, resume_cursor

PATH = "/api/stream/metrics"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def stream(hub: Hub, scope: Scope, receive: Receive, send: Send) -> None:
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


def _request(hub: Hub, scope: Scope) -> tuple[Filter, int | None]:
    """Check the token, read the filter and the cursor (a function of its own so that the parsed
    query does not stay alive, per connection, in the frame of the endless stream)."""
    query = query_of(scope)
    check(hub.settings, "read", presented_token(scope["headers"]), query.get("access_token", [None])[-1])
    flt = parse_filter(query.get("run_id", []), query.get("kinds", []), query.get("keys", []))
    return flt, resume_cursor(header_of(scope, b"last-event-id"), query.get("after", [None])[-1])


async def _watch_disconnect(receive: Receive, sub: Subscriber) -> None:
    """The only task a subscriber owns: it learns of the client going away."""
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.finish("disconnected")
