"""Running the server: in the foreground (`trainpilot serve`) or in a thread of the training process.

The thread form is the seed's layout (`trainpilot.init(serve=True)`): the server gets its own event
loop in a daemon thread, and the SDK's embedded transport hands batches to its Hub directly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import threading
import time
from typing import Any

import uvicorn

from trainpilot.server.app import Dispatcher, create_app
from trainpilot.server.hub import Hub
from trainpilot.server.wsprotocol import LeanWebSocketProtocol
from trainpilot.settings import Settings

log = logging.getLogger("trainpilot.server")


class Server(uvicorn.Server):
    """uvicorn, ending the endless streams first so a graceful shutdown is quick and quiet."""

    def __init__(self, config: uvicorn.Config, app: Dispatcher) -> None:
        super().__init__(config)
        self.trainpilot = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = getattr(self.trainpilot.api.state, "hub", None)
        if hub is not None:
            await hub.broker.close()
        await super().shutdown(sockets)


class RedactQueryTokens(logging.Filter):
    """The access log (on at debug level) shows request paths: never the signed tokens in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                QUERY_TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


QUERY_TOKEN = re.compile(r"((?:access_token|token)=)[^&\s]+")
logging.getLogger("uvicorn.access").addFilter(RedactQueryTokens())


def uvicorn_config(settings: Settings, app: Any, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="on",
        ws=LeanWebSocketProtocol,  # uvicorn's websockets-sansio, holding less per connection
        timeout_graceful_shutdown=3,
        **extra,
    )


def serve_forever(settings: Settings) -> None:
    """Run until Ctrl-C, printing the URL once the socket is listening."""
    settings.check()
    app = create_app(settings)
    Server(uvicorn_config(settings, app), app).run()


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """A server on its own loop in a daemon thread; `hub` and `loop` let in-process callers reach it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.check()
        self.app: Dispatcher = create_app(settings)
        self.server = Server(uvicorn_config(settings, self.app), self.app)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="trainpilot-server", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.api.state.hub
        return hub

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the embedded trainpilot server did not start on {self.url}: {self._error!r}"
                )
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
