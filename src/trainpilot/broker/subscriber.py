"""A subscriber: a cursor, a filter and a way to write. No queue, no task per event.

The broker writes to a subscriber by calling its ASGI `send` directly and stepping the coroutine
once (`step`): when the socket can take the bytes, the write completes right there and costs no
task, no wake-up. Only a subscriber whose socket is full gets a task (`resume`) that waits for it
to drain; while that task runs the subscriber is `busy` and the broadcaster passes it by.

On uvicorn (its sans-I/O WebSocket protocol, its httptools HTTP protocol) the broker writes frames
straight to the subscriber's transport (`direct`): a server's WebSocket frames are not masked and an
SSE body's chunks carry no state, so one framed message serves every subscriber that shares it (the
`websockets.broadcast` way, DESIGN.md), where each ASGI send would copy, frame and join it again.
Anything else, and a connection that cannot take more now, goes through `send`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from trainpilot.events import Event
from trainpilot.wire import encode_event, sse_frame, sse_named

Send = Callable[[dict[str, Any]], Awaitable[None]]
Format = Literal["sse", "ws"]
DONE = object()


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a subscriber wants. ``None`` means everything; `keys` trims metrics events."""

    run_ids: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    keys: frozenset[str] | None = None

    def project(self, event: Event) -> Event | None:
        """The event as this subscriber sees it, or None when it does not match."""
        if self.run_ids is not None and event.run_id not in self.run_ids:
            return None
        if self.kinds is not None and event.kind not in self.kinds:
            return None
        if self.keys is None or event.kind != "metrics":
            return event
        data = {k: v for k, v in event.data.items() if self.wants_key(k)}
        if not data:
            return None
        return Event(event.id, event.run_id, event.seq, event.kind, event.ts, event.step, data)

    def wants_key(self, key: str) -> bool:
        assert self.keys is not None
        return key in self.keys or any(k.endswith("*") and key.startswith(k[:-1]) for k in self.keys)

    @property
    def trims(self) -> bool:
        return self.keys is not None


# uvicorn's objects behind an ASGI `send` that the broker may write frames to itself, by class and module
# (server/wsprotocol.py's class is uvicorn's sans-I/O protocol with lighter containers).
DIRECT = {
    "ws": {
        ("WebSocketsSansIOProtocol", "uvicorn.protocols.websockets.websockets_sansio_impl"),
        ("LeanWebSocketProtocol", "trainpilot.server.wsprotocol"),
    },
    "sse": {("RequestResponseCycle", "uvicorn.protocols.http.httptools_impl")},
}


def direct(send: Send, fmt: Format) -> Any:
    """The uvicorn protocol (WebSocket) or response cycle (SSE over httptools) behind an ASGI `send`,
    or None: another server, or a `send` wrapped by a middleware, is written the ASGI way."""
    owner = getattr(send, "__self__", None)
    kind = type(owner)
    return owner if (kind.__name__, kind.__module__) in DIRECT[fmt] else None


def writable(fmt: Format, owner: Any) -> bool:
    """A frame can go now: the connection is open, nothing ended it and its buffer is not full."""
    if owner.disconnected or owner.transport.is_closing():
        return False
    if fmt == "ws":
        return not owner.close_sent and bool(owner.writable.is_set())
    return bool(owner.chunked_encoding and not (owner.response_complete or owner.flow.write_paused))


def framed(message: dict[str, Any]) -> bytes:
    """An ASGI message as the bytes on the wire: one unmasked, unfragmented WebSocket text frame, or
    one HTTP/1.1 chunk of a streamed SSE body."""
    if message["type"] == "http.response.body":
        body: bytes = message["body"]
        return b"%x\r\n%b\r\n" % (len(body), body)
    payload: bytes = message["text"].encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


class Subscriber:
    __slots__ = ("busy", "busy_since", "cursor", "direct", "done", "filter", "format", "group", "send")

    def __init__(self, send: Send, fmt: Format, flt: Filter, cursor: int) -> None:
        self.send = send
        self.direct = direct(send, fmt)
        self.format: Format = fmt
        self.filter = flt
        self.group = -1  # the broker's number for (filter, format), given when it joins the live stream
        self.cursor = cursor  # every matching event with id <= cursor has been written
        self.busy: asyncio.Task[None] | None = None
        self.busy_since = 0.0
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


def events_message(fmt: Format, frames: list[tuple[Event, bytes, bytes]]) -> dict[str, Any]:
    """One ASGI message carrying many events: a run of SSE frames, or one WebSocket text message."""
    if fmt == "sse":
        return {"type": "http.response.body", "body": b"".join(f[2] for f in frames), "more_body": True}
    body = b'{"op":"events","events":[' + b",".join(f[1] for f in frames) + b"]}"
    return {"type": "websocket.send", "text": body.decode()}


def encoded(event: Event) -> tuple[Event, bytes, bytes]:
    """An event with its JSON and its SSE frame, encoded once.

    The JSON kept is a slice of the frame, not orjson's own bytes: those hold a buffer of about
    4 kB whatever their length (orjson 3.13, ad hoc tracemalloc: 4,099 B for 58 bytes of JSON), and
    the ring keeps 16,384 events; tests/test_subscriber.py checks what an encoded event holds.
    """
    payload = encode_event(event)
    frame = sse_frame(event, payload)
    return event, frame[len(frame) - len(payload) - 2 : -2], frame


def resync_message(fmt: Format, last_id: int) -> dict[str, Any]:
    """What a subscriber that fell behind gets before it is closed: resume from the store with `last_id`.

    The SSE notice ends the response. A WebSocket is closed by its endpoint (server/ws.py) once the
    subscriber finishes with ``resync``: the endpoint also answers the socket's ops, and must know
    that the socket is closed before it answers one.
    """
    notice = {"last_id": last_id, "reason": "fell behind the live stream; reconnect with this id to resume"}
    if fmt == "sse":
        return {"type": "http.response.body", "body": sse_named("resync", notice), "more_body": False}
    return {"type": "websocket.send", "text": orjson.dumps({"op": "resync", **notice}).decode()}


def step(coro: Coroutine[Any, Any, None]) -> Any:
    """Run `coro` until it first suspends. Return what it waits on, or DONE if it finished."""
    try:
        return coro.send(None)
    except StopIteration:
        return DONE


async def resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive a coroutine that `step` left suspended to its end, as a Task would have."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # A Task clears this flag when it takes the future over; we are taking it over.
                waiting._asyncio_future_blocking = False
                await waiting
        except BaseException as exc:
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
