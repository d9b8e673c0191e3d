"""WS /api/ws: one socket to subscribe (with a cursor), ingest, control and ping.

Messages are JSON objects with an ``op``; replies echo the client's ``ref``. Errors are messages
(``{"op": "error", ...}``), never a dropped socket. Live events arrive as
``{"op": "events", "events": [...]}`` written by the broker straight to the socket, several per
message under load; a subscriber that falls behind gets ``{"op": "resync", "last_id": N}`` and the
socket is closed (code 4000). An answer still due then (an op that was in flight) is dropped: the
client reconnects with that id, and ingest is idempotent by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from trainpilot.broker import Subscriber
from trainpilot.events import NewEvent
from trainpilot.exceptions import InvalidInput
from trainpilot.server.auth import check, presented_token
from trainpilot.server.errors import HTTPError, classify
from trainpilot.server.http import query_of
from trainpilot.server.hub import Hub
from trainpilot.server.metrics_batch import decode_ingest_message
from trainpilot.server.params import parse_cursor, parse_filter, string_list
from trainpilot.wire import check_run_id, decode_batch

PATH = "/api/ws"


class Connection:
    def __init__(self, hub: Hub, scope: Scope, send: Send) -> None:
        self.hub = hub
        self.send = send
        query = query_of(scope)
        self.token = presented_token(scope["headers"])
        self.query_token = query.get("access_token", [None])[-1]  # signed, read only (auth.py)
        self.peer = f"ws:{scope['client'][0]}" if scope.get("client") else "ws:unknown"
        self.sub: Subscriber | None = None
        self.serving: asyncio.Task[None] | None = None
        self.received_at = 0.0  # when the message being handled arrived: ingest's receipt time
        self.closed = False  # set as the close is sent: nothing may be sent after it

    async def reply(self, message: dict[str, Any]) -> None:
        if not self.closed:
            await self.send({"type": "websocket.send", "text": orjson.dumps(message).decode()})

    async def serve(self, sub: Subscriber) -> None:
        """The subscription, until it ends; one cut off with ``resync`` closes the socket."""
        await self.hub.broker.serve(sub)
        if sub.done.result() == "resync" and not self.closed:
            self.closed = True
            await self.send({"type": "websocket.close", "code": 4000, "reason": "resync"})

    async def handle(self, raw: str | bytes) -> None:
        ref = None
        try:
            self.received_at = time.perf_counter()
            if (fast := decode_ingest_message(raw)) is not None:  # the usual message, decoded in C
                ref, run_id, events = fast
                check(self.hub.settings, "write", self.token, self.query_token)
                reply = await self.ingest(check_run_id(run_id), events)
            else:
                message = parse_message(raw)
                ref = message.get("ref")
                reply = await self.dispatch(message)
        except Exception as exc:
            found = classify(exc)
            if found is None:
                raise
            _status, code, text, field = found
            error = {"code": code, "message": text, **({"field": field} if field is not None else {})}
            reply = {"op": "error", "error": error}
        await self.reply(self.with_ref(reply, ref))

    async def dispatch(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message handed to its op; the op's reply."""
        op = message.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise InvalidInput("op", "must be one of subscribe, unsubscribe, ingest, control, ping")
        reply: dict[str, Any] = await handler(message)
        return reply

    @staticmethod
    def with_ref(reply: dict[str, Any], ref: Any) -> dict[str, Any]:
        """The reply, carrying the message's `ref` where it had one."""
        if ref is not None:
            reply["ref"] = ref
        return reply

    async def op_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"op": "pong", "head": self.hub.broker.head}

    async def op_subscribe(self, message: dict[str, Any]) -> dict[str, Any]:
        check(self.hub.settings, "read", self.token, self.query_token)
        flt = parse_filter(
            string_list(message.get("run_id"), "run_id"),
            string_list(message.get("kinds"), "kinds"),
            string_list(message.get("keys"), "keys"),
        )
        after = parse_cursor(message.get("after"), "after")
        await self.stop_serving("resubscribed")
        cursor = self.hub.broker.head if after is None else after
        self.sub = Subscriber(self.send, "ws", flt, cursor)
        # The reply goes out before the first events: serving starts on the next loop turn.
        self.serving = asyncio.create_task(self.serve(self.sub))
        return {"op": "subscribed", "after": cursor}

    async def op_unsubscribe(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.stop_serving("unsubscribed")
        return {"op": "unsubscribed"}

    async def op_ingest(self, message: dict[str, Any]) -> dict[str, Any]:
        check(self.hub.settings, "write", self.token, self.query_token)
        run_id = message.get("run_id")
        if not isinstance(run_id, str):
            raise InvalidInput("run_id", "required: the run the events belong to")
        return await self.ingest(run_id, decode_batch(check_run_id(run_id), message))

    async def ingest(self, run_id: str, events: list[NewEvent]) -> dict[str, Any]:
        """Store a batch (the caller checked the token and the run id)."""
        result = await self.hub.ingest(run_id, events, self.received_at)
        return {"op": "ingested", **result.as_dict()}

    async def op_control(self, message: dict[str, Any]) -> dict[str, Any]:
        check(self.hub.settings, "write", self.token, self.query_token)
        run_id = message.get("run_id")
        if not isinstance(run_id, str):
            raise InvalidInput("run_id", "required: the run to control")
        action = message.get("action")
        event = await self.hub.request_control(
            run_id, str(action), message.get("value"), requested_by=self.peer
        )
        return {
            "op": "control",
            "command_id": event.id,
            "run_id": run_id,
            "action": action,
            "status": "requested",
        }

    async def stop_serving(self, reason: str) -> None:
        if self.sub is not None:
            self.sub.finish(reason)
        if self.serving is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.serving
        self.sub = self.serving = None


def parse_message(raw: str | bytes) -> dict[str, Any]:
    """A message as JSON, or the error that names what is wrong with it."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, "bad_json", f"message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise InvalidInput("message", "expected a JSON object with an 'op'")
    return message


async def websocket(hub: Hub, scope: Scope, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    conn = Connection(hub, scope, send)
    scope["headers"] = []  # read (Origin, Host, the token): not kept for the socket's hours of life
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            await conn.handle(raw if raw is not None else message.get("bytes") or b"")
    except OSError:
        pass  # the client went away while we answered it (uvicorn's ClientDisconnected)
    finally:
        await conn.stop_serving("disconnected")
