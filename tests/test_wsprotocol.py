"""The server's WebSocket protocol: uvicorn's, with containers that hold less per connection."""

from __future__ import annotations

import asyncio
import time

from websockets.sync.client import connect

from tests.conftest import wait_until
from trainpilot.server.runner import ServerThread
from trainpilot.server.wsprotocol import Flag, Inbox, LeanWebSocketProtocol


def test_the_inbox_is_a_fifo_whose_getters_each_get_one_message() -> None:
    async def body() -> None:
        inbox = Inbox()
        assert inbox.empty()
        first, second = asyncio.create_task(inbox.get()), asyncio.create_task(inbox.get())
        await asyncio.sleep(0)
        assert not first.done() and not second.done()  # nothing yet: both wait
        inbox.put_nowait("a")
        inbox.put_nowait("b")
        assert sorted(await asyncio.gather(first, second)) == ["a", "b"]
        inbox.put_nowait(1)
        inbox.put_nowait(2)
        assert not inbox.empty() and [await inbox.get(), await inbox.get()] == [1, 2] and inbox.empty()

    asyncio.run(asyncio.wait_for(body(), 5))


def test_the_flag_wakes_its_waiters_and_a_cancelled_waiter_harms_no_other() -> None:
    async def body() -> None:
        flag = Flag()
        assert not flag.is_set()
        gone, waiting = asyncio.create_task(flag.wait()), asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        flag.set()
        assert await waiting is True and flag.is_set()
        flag.clear()
        later = asyncio.create_task(flag.wait())
        await asyncio.sleep(0.01)
        assert not later.done()
        flag.set()
        assert await later is True

    asyncio.run(asyncio.wait_for(body(), 5))


def test_a_live_websocket_runs_the_lean_protocol_with_its_handshake_let_go(
    threaded_server: ServerThread,
) -> None:
    connections = threaded_server.server.server_state.connections
    with connect(threaded_server.url.replace("http", "ws", 1) + "/api/ws") as ws:
        wait_until(lambda: any(isinstance(c, LeanWebSocketProtocol) for c in connections), timeout=5)
        (protocol,) = [c for c in connections if isinstance(c, LeanWebSocketProtocol)]
        wait_until(lambda: protocol.response is None, timeout=5, what="the accepted handshake dropped")
        assert protocol.request is None and isinstance(protocol.queue, Inbox)
        assert protocol.scope["headers"] == []  # read by the guard and the connection, then let go
        held = protocol.conn.parser.gi_frame.f_locals["request"]  # websockets' parser keeps the request
        assert held.path == "/api/ws" and len(held.headers) == 0  # but not its headers
        assert isinstance(protocol.writable, Flag) and protocol.writable.is_set()
        ws.send('{"op": "ping"}')  # a message through the inbox, answered
        assert "pong" in str(ws.recv(timeout=5))
    deadline = time.monotonic() + 5
    while protocol in connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert protocol not in connections
