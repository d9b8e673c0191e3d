"""uvicorn's sans-I/O WebSocket protocol, holding less per connection while it lives.

A live subscriber's socket stays open for hours, and a server has thousands of them (bench case 4:
5,000). `bench/ws_memory.py` traced 20.8 kB a WebSocket connection, 1.7 kB of it trainpilot's;
most of the rest is what uvicorn's protocol keeps after the handshake and never uses again, or
general-purpose asyncio objects where one waiter is all there is:

- the handshake's request and response (two websockets `Headers`, ~2.6 kB): dropped once accepted;
- an `asyncio.Queue` for received messages (three deques, ~2.3 kB): a list and one waiter here;
- an `asyncio.Event` for the write buffer's state (a deque, ~0.8 kB): a flag and its waiters.

The frames, the handshake, keepalive pings and closing are uvicorn's code, unchanged: this changes
the containers, not the protocol. The broker's direct writes (broker/subscriber.py) know this class.
With it, and server/ws.py letting go of the handshake's headers once read, `ws_memory.py 2000 ws`
traces 14.5 kB a connection; emptying the request's headers, which the websockets parser's
generator frame still holds, brings that to 12.7 kB.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class _Waiters:
    """The futures of the tasks waiting on a container, made only when one waits."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():  # a waiter whose task was cancelled is done already
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class Inbox(_Waiters):
    """`asyncio.Queue`'s put_nowait / get / empty for the messages of one socket."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        super().__init__()
        self._items: list[Any] = []  # a handful at most: reading pauses while one waits

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    async def get(self) -> Any:
        while not self._items:
            await self._wait()
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items


class Flag(_Waiters):
    """`asyncio.Event`'s set / clear / is_set / wait, with no deque until someone waits."""

    __slots__ = ("_on",)

    def __init__(self) -> None:
        super().__init__()
        self._on = False

    def set(self) -> None:
        self._on = True
        self._wake()

    def clear(self) -> None:
        self._on = False

    def is_set(self) -> bool:
        return self._on

    async def wait(self) -> bool:
        while not self._on:
            await self._wait()
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # websockets' parser keeps this Request in its generator's frame for the connection's life,
            # so dropping our reference frees nothing: empty its headers in place (read into the
            # scope already, and by nothing after the accept)
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]  # read only by the accept
