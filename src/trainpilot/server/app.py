"""The ASGI application: FastAPI for REST, plain ASGI for the two endless streams.

>>> app = create_app(Settings(store="memory://"))  # doctest: +SKIP
>>> uvicorn.run(app, port=8765)                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from trainpilot.broker import open_broker
from trainpilot.events import Event
from trainpilot.server import auth, errors, media, rest, sse, system, ws
from trainpilot.server.alerts import Alerts
from trainpilot.server.analysts import open_analyst
from trainpilot.server.assistant import MCP_PATH, LazyMCP
from trainpilot.server.explain import Explainer
from trainpilot.server.guard import Guard, refuse, split_list
from trainpilot.server.hub import Hub
from trainpilot.settings import Settings
from trainpilot.store import CommitListener, open_store
from trainpilot.version import __version__

STREAM_DOC = {
    "get": {
        "tags": ["stream"],
        "summary": "Server-Sent Events: live events, named by kind, resumable",
        "description": "Frames are `id: <event id>`, `event: <kind>`, `data: <event JSON>`. Resume with the "
        "`Last-Event-ID` header or `?after=<id>`: no gap, no duplicate. Without either, the stream "
        "starts at the live head. A `: keepalive` comment comes every 15 s. A subscriber that falls "
        'behind gets `event: resync` with `{"last_id": N}` and is closed; reconnect with that id.',
        "parameters": [
            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "run_id", "in": "query", "schema": {"type": "string"}, "description": "comma-separated"},
            {
                "name": "kinds",
                "in": "query",
                "schema": {"type": "string"},
                "description": "comma-separated: metrics,status,control,insight,media,log",
            },
            {
                "name": "keys",
                "in": "query",
                "schema": {"type": "string"},
                "description": "comma-separated metric names; `prefix*` matches a prefix",
            },
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}},
        ],
        "responses": {"200": {"description": "text/event-stream"}, "400": {"description": "bad parameter"}},
    }
}

log = logging.getLogger("trainpilot.server")
# The page runs only its own scripts, talks only to its own server, and is never framed by another
# site (a framed control button could be clicked through a decoy: clickjacking).
PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard"


def create_app(settings: Settings) -> Dispatcher:
    """The whole server as one ASGI app; the store opens and the broker starts in its lifespan."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.store_url)
        await store.open()
        broker = open_broker(
            settings.broker,
            store,
            ring_size=settings.ring_size,
            heartbeat_s=settings.heartbeat_s,
            stall_timeout_s=settings.stall_timeout_s,
        )
        store.on_commit = broker.publish
        await broker.start(await store.last_id())
        hub = Hub(settings, store, broker)
        if hub.alerts.hooks:
            store.on_commit = _publish_then_alert(broker.publish, hub.alerts)
            hub.alerts.start()
        if hub.advisors.explains:
            hub.analysis.explainer = Explainer(hub.advisors, store)
        hub.analysis.analyst = await open_analyst(settings.analysis)
        api.state.hub = hub
        api.state.registry = system.registry(hub)
        await hub.load_lost()
        watchdog = asyncio.create_task(_watch_liveness(hub), name="trainpilot-liveness")
        try:
            yield
        finally:
            await assistant.close()
            watchdog.cancel()
            await hub.alerts.close()
            await hub.advisors.close()
            await hub.analysis.analyst.close()
            await broker.close()
            await store.close()

    api = FastAPI(
        title="trainpilot",
        version=__version__,
        lifespan=lifespan,
        description="Observe, control and explain training while it runs.",
    )
    errors.install(api)
    api.include_router(rest.router)
    api.include_router(media.router)

    @api.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html", headers=PAGE_HEADERS)

    api.mount("/static", StaticFiles(directory=DASHBOARD), name="static")

    schema = api.openapi()
    schema["paths"][sse.PATH] = STREAM_DOC
    assistant = LazyMCP(api)
    return Dispatcher(api, assistant, Guard(settings), split_list(settings.cors_origins))


INGEST = re.compile(r"^/api/runs/([^/]+)/events$")


def _publish_then_alert(publish: CommitListener, alerts: Alerts) -> CommitListener:
    """The commit listener with webhooks: fan-out first, then the alert filter (which only queues)."""

    def committed(events: list[Event]) -> None:
        try:
            publish(events)
        finally:
            alerts.observe(events)

    return committed


async def _watch_liveness(hub: Hub) -> None:
    """Mark runs whose process went silent as lost, a few times per timeout."""
    every = min(5.0, hub.settings.run_timeout_s / 4)
    while True:
        await asyncio.sleep(every)
        try:
            for run_id in await hub.mark_lost():
                log.warning("run %s marked lost: nothing heard for %g s", run_id, hub.settings.run_timeout_s)
        except Exception:  # a store hiccup must not end the watch; the next round retries
            log.exception("liveness check failed")


class Dispatcher:
    """Refuses what the guard refuses, then sends the two endless streams and MCP straight to their
    handlers, everything else to FastAPI."""

    def __init__(self, api: FastAPI, mcp_app: ASGIApp, guard: Guard, cors_origins: list[str]) -> None:
        self.api = api
        self.mcp_app = mcp_app
        self.guard = guard
        # CORS is off unless origins are configured: browsers then refuse other sites' pages the API.
        self.entry: ASGIApp = self.route
        if cors_origins:
            self.entry = CORSMiddleware(
                self.route,
                allow_origins=cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Trainpilot-Token"],
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and (refusal := self.guard.refusal(scope)) is not None:
            await refuse(refusal, scope, receive, send)
            return
        await self.entry(scope, receive, send)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["method"] == "POST" and (found := INGEST.match(scope["path"])):
            await self.ingest(scope, receive, send, found.group(1))
        elif kind == "http" and scope["path"] == sse.PATH:
            await sse.stream(self.api.state.hub, scope, receive, send)
        elif kind == "websocket" and scope["path"] == ws.PATH:
            await ws.websocket(self.api.state.hub, scope, receive, send)
        elif kind == "http" and scope["path"] in (MCP_PATH, MCP_PATH + "/"):
            await self.mcp_app(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def ingest(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        """Every training run's hot path, past FastAPI's routing and dependency solving (measured:
        most of the server's time per small batch): the same auth, limits, validation and answers
        as the documented route, which stays for the OpenAPI schema."""
        received = time.perf_counter()
        hub: Hub = self.api.state.hub
        request = Request(scope, receive)
        try:
            auth.check(hub.settings, "write", auth.presented_token(scope["headers"]))
            response = await rest.ingest_batch(hub, request, run_id, received)
        except Exception as exc:
            answer = errors.known_error(exc)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)
