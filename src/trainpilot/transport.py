"""How the SDK's batches reach a server: over HTTP, or straight into an in-process server.

One seam (httpx's idea): `create_run` and `send` either succeed or raise `TransportError`, whose
`retryable` says whether the sender should spool and try again (server away, 5xx, unknown run)
or give the batch up (the server refused it as invalid).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from trainpilot.exceptions import NotFound, StoreUnavailable, TransportError

if TYPE_CHECKING:
    import httpx

    from trainpilot.server.runner import ServerThread


class Transport(Protocol):
    url: str

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]: ...

    def send(self, run_id: str, events: list[dict[str, Any]]) -> None: ...

    def upload_media(
        self, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
    ) -> None: ...

    def close(self) -> None: ...


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def env_token() -> str | None:
    """The token clients present by default: the write token, else a read-only one."""
    return os.environ.get("TRAINPILOT_TOKEN") or os.environ.get("TRAINPILOT_READ_TOKEN") or None


class HttpTransport:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.url, headers=auth_headers(token), timeout=httpx.Timeout(timeout, connect=2.0)
        )

    def _post(
        self, path: str, body: dict[str, Any] | bytes, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        content, kind = (
            (body, "application/octet-stream")
            if isinstance(body, bytes)
            else (orjson.dumps(body), "application/json")
        )
        try:
            response = self._client.post(path, content=content, params=params, headers={"content-type": kind})
        except self._httpx.HTTPError as exc:
            raise TransportError(f"{self.url} unreachable: {exc}") from exc
        if response.status_code < 400:
            return response
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        retryable = response.status_code >= 500 or response.status_code in (404, 408, 429)
        raise TransportError(f"{path}: HTTP {response.status_code}: {message}", retryable=retryable)

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        run: dict[str, Any] = self._post("/api/runs", spec).json()
        return run

    def send(self, run_id: str, events: list[dict[str, Any]]) -> None:
        self._post(f"/api/runs/{run_id}/events", {"events": events})

    def upload_media(
        self, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
    ) -> None:
        params = {k: v for k, v in (("name", name), ("step", step), ("caption", caption)) if v is not None}
        self._post(f"/api/runs/{run_id}/media", body, params)

    def close(self) -> None:
        self._client.close()


class EmbeddedTransport:
    """Batches go to the in-process server's Hub on its loop: no HTTP, no JSON round trip."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.url = server.url

    def _call(self, coro: Any) -> Any:
        loop = self.server.loop
        if loop is None or loop.is_closed():
            coro.close()
            raise TransportError("the embedded server is not running")
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)
        except (NotFound, StoreUnavailable, TimeoutError) as exc:
            raise TransportError(str(exc)) from exc
        except Exception as exc:  # invalid input: sending it again would not help
            raise TransportError(str(exc), retryable=False) from exc

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        run, _ = self._call(
            self.server.hub.create_run(spec["id"], spec["project"], spec["name"], spec["config"])
        )
        return {"id": run.id, "last_event_id": run.last_event_id}

    def send(self, run_id: str, events: list[dict[str, Any]]) -> None:
        from trainpilot.wire import decode_batch

        self._call(self.server.hub.ingest(run_id, decode_batch(run_id, events)))

    def upload_media(
        self, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
    ) -> None:
        from trainpilot.server.media import save_media

        self._call(save_media(self.server.hub, run_id, name, step, caption, body))

    def close(self) -> None:
        return None
