"""`trainpilot.init(serve=True)`: the server in a thread of the training process, fed without HTTP.

The one place in the SDK that reaches into the server (docs/architecture.md, layers): everything else
in `sdk/` speaks the wire contract only. `run.py` imports this module when `serve=True` alone, so a
training script that logs to a remote server never loads uvicorn and FastAPI.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from trainpilot.exceptions import TransportError
from trainpilot.server.errors import classify
from trainpilot.server.media import save_media
from trainpilot.server.runner import ServerThread, free_port, port_free
from trainpilot.settings import Settings
from trainpilot.wire import decode_batch

T = TypeVar("T")


def start_server(data_dir: str, token: str | None, port: int | None) -> ServerThread:
    """The server on `port` (None: the configured one, or any free one if that is taken; 0: any free)."""
    settings = Settings.from_env(data_dir=data_dir, token=token, port=port, log_level="warning")
    if port == 0 or (port is None and not port_free(settings.host, settings.port)):
        settings = Settings.from_env(
            data_dir=data_dir, token=token, port=free_port(settings.host), log_level="warning"
        )
    server = ServerThread(settings).start()
    print(
        f"trainpilot: serving on {server.url}/ (stream {server.url}/api/stream/metrics)",
        file=sys.stderr,
    )
    return server


class EmbeddedTransport:
    """Batches go to the in-process server's Hub on its loop: no HTTP, no JSON round trip.

    A failure raises `TransportError` with the status and code the HTTP server would answer, so the
    sender treats both transports alike (transport.py).
    """

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.url = server.url

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.server.loop
        if loop is None or loop.is_closed():
            coro.close()
            raise TransportError("the embedded server is not running")
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)
        except TimeoutError as exc:
            raise TransportError(f"the embedded server did not answer in 30 s: {exc!r}") from exc
        except Exception as exc:
            status, code, message, _ = classify(exc) or (500, "error", repr(exc), None)
            raise TransportError(message, status=status, code=code) from exc

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        run, _ = self._call(
            self.server.hub.create_run(spec["id"], spec["project"], spec["name"], spec["config"])
        )
        return {"id": run.id, "last_event_id": run.last_event_id}

    def send(self, run_id: str, events: list[dict[str, Any]]) -> None:
        self._call(self.server.hub.ingest(run_id, decode_batch(run_id, events)))

    def upload_media(
        self, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
    ) -> None:
        self._call(save_media(self.server.hub, run_id, name, step, caption, body))

    def close(self) -> None:
        return None
