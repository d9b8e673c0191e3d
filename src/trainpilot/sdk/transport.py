"""How the SDK's batches reach a server: the `Transport` seam, and its HTTP implementation.

One seam: `create_run` and `send` either succeed or raise `TransportError` with the server's
HTTP status and error code (both None when no answer came), whatever the transport: the embedded
one (embedded.py) gives an exception the status and code the HTTP server would answer it with. The
sender decides from them alone whether to spool and try again or give the batch up.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Protocol

import orjson

from trainpilot.client.rest import auth_headers, http_error, run_path
from trainpilot.exceptions import TransportError
from trainpilot.sdk.http1 import Connection, Disconnected
from trainpilot.wire import MEDIA_BODY_TYPE

CONNECT_TIMEOUT_S = 2.0


class Transport(Protocol):
    url: str

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]: ...

    def send(self, run_id: str, events: list[dict[str, Any]]) -> None: ...

    def upload_media(
        self, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
    ) -> None: ...

    def close(self) -> None: ...


class HttpTransport:
    """One keep-alive connection (http1.py: under half of `http.client`'s CPU per batch, which is
    itself a third of httpx's; `python bench/transport_cost.py`). The sender posts from a background
    thread of the training process, so what a request costs that process is taken from training
    (bench case 2)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must be http(s)://host[:port], got {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path
        self._headers = header_lines(auth_headers(token))
        self._timeout = timeout
        self._conn: Connection | None = None

    def _request(self, target: str, content: bytes, kind: str) -> tuple[int, bytes]:
        """Status and body; a kept-alive connection the server closed meanwhile is reopened once."""
        headers = f"{self._headers}Content-Type: {kind}\r\n"
        for attempt in range(2):
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = Connection(
                        self._host, self._port, self._https, CONNECT_TIMEOUT_S, self._timeout
                    )
                status, body, will_close = self._conn.post(target, headers, content)
                if will_close:
                    self.close()
                return status, body
            except OSError as exc:
                self.close()
                stale = isinstance(exc, Disconnected | BrokenPipeError | ConnectionResetError)
                if attempt == 0 and reused and stale:
                    continue  # the server let an idle connection go: events carry seq, resending is safe
                raise TransportError(f"{self.url} unreachable: {exc!r}") from exc
        raise AssertionError("the second attempt returns or raises")

    def _post(self, path: str, body: dict[str, Any] | bytes, params: dict[str, Any] | None = None) -> bytes:
        content, kind = (
            (body, MEDIA_BODY_TYPE) if isinstance(body, bytes) else (orjson.dumps(body), "application/json")
        )
        target = self._base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        status, answer = self._request(target, content, kind)
        if status >= 400:
            raise http_error(path, status, answer)
        return answer

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        run: dict[str, Any] = orjson.loads(self._post("/api/runs", spec))
        return run

    def send(self, run_id: str, events: list[dict[str, Any]]) -> None:
        self._post(run_path(run_id, "/events"), {"events": events})

    def upload_media(
        self, run_id: str, name: str, step: int | None, caption: str | None, body: bytes
    ) -> None:
        params = {k: v for k, v in (("name", name), ("step", step), ("caption", caption)) if v is not None}
        self._post(run_path(run_id, "/media"), body, params)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def header_lines(headers: dict[str, str]) -> str:
    """``Name: value\\r\\n`` lines, refused at once if a value (a token) could end its line early."""
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} holds a line break or NUL: check the token")
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())
