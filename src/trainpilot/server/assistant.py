"""The /mcp endpoint, built on its first request.

The MCP SDK and what it imports cost about 30 MB of resident memory (measured, bench case 6): a
server nobody asks over MCP should not carry them. The first request builds the app; one task
owns the SDK's session manager from then until the server stops (its task group must be entered
and left by the same task).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

MCP_PATH = "/mcp"


class LazyMCP:
    def __init__(self, api: Any) -> None:
        self.api = api
        self._app: ASGIApp | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            if self._ready is None:
                self._ready = asyncio.get_running_loop().create_future()
                self._owner = asyncio.create_task(self._own(self._ready), name="trainpilot-mcp")
            await asyncio.shield(self._ready)
        assert self._app is not None  # set before _ready resolves
        await self._app(scope, receive, send)

    async def _own(self, ready: asyncio.Future[None]) -> None:
        try:
            from mcp.server.transport_security import TransportSecuritySettings

            from trainpilot.server import mcp as mcpserver

            assistant = mcpserver.in_process(self.api)
            # The server's guard (guard.py) has checked Host and Origin already, against the names the
            # server is configured with; the SDK's own loopback-only check would refuse those names.
            app = assistant.streamable_http_app(
                streamable_http_path=MCP_PATH,
                stateless_http=True,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )
            async with assistant.session_manager.run():
                self._app = app
                ready.set_result(None)
                await self._stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
                self._ready = None  # the next request tries again
            raise

    async def close(self) -> None:
        self._stop.set()
        if self._owner is not None:
            with contextlib.suppress(Exception):
                await self._owner
