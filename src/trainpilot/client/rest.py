"""The client of a trainpilot server's REST API: its URL, token and timeouts, and what its errors say.

The CLI and the MCP tools call the API through `ApiClient`; the SDK's transport keeps its own lean
connection for ingest and the SSE reader its own stream, but all of them build the Bearer header with
`auth_headers` and read an error answer with `http_error`, so a refusal reads the same everywhere::

    >>> str(http_error("GET /api/runs/ghost", 404, b'{"error": {"code": "not_found", "message": "no run"}}'))
    'GET /api/runs/ghost: HTTP 404: no run'

Every failure is a `TransportError`: the server's status and error code, or None for both when no
answer came.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from trainpilot.exceptions import TransportError

if TYPE_CHECKING:  # imported where used: the CLI and `import trainpilot` start without httpx
    import httpx

    from trainpilot.client.sse import ServerEvent


def env_token() -> str | None:
    """The token clients present by default: the write token, else a read-only one."""
    return os.environ.get("TRAINPILOT_TOKEN") or os.environ.get("TRAINPILOT_READ_TOKEN") or None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def run_path(run_id: str, tail: str = "") -> str:
    """``/api/runs/<id><tail>`` with the id as one path segment: ids may hold spaces, '?', '#' or '%'."""
    return f"/api/runs/{urllib.parse.quote(run_id, safe='')}{tail}"


def http_error(where: str, status: int, body: bytes) -> TransportError:
    """The error an answer of `status` stands for, in the server's words when it is our server's JSON
    error (``{"error": {"code": ..., "message": ...}}``), else the body's start."""
    try:
        error = orjson.loads(body)["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):  # not our server's JSON error
        message, code = body[:200].decode(errors="replace"), None
    return TransportError(
        f"{where}: HTTP {status}: {message}", status=status, code=code if isinstance(code, str) else None
    )


class ApiClient:
    """Calls to one server: `call` and `events` from plain code, `acall` from async code.

    `transport` is for the server's own in-process calls (an `httpx.ASGITransport`: async only);
    per-call `headers` go over the token's, e.g. to forward a caller's own credentials.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        connect_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = auth_headers(token)
        self.timeout_s, self.connect_s = timeout_s, connect_s or timeout_s
        self.transport = transport

    def _options(self) -> dict[str, Any]:
        import httpx

        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_s)
        return {"base_url": self.url, "headers": self.headers, "timeout": timeout}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer (None when it is not JSON)."""
        import httpx

        try:
            with httpx.Client(**self._options()) as http:
                response = http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return _answer(method, path, response)

    async def acall(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            async with httpx.AsyncClient(**self._options(), transport=self.transport) as http:
                response = await http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return _answer(method, path, response)

    def events(self, method: str, path: str, **kwargs: Any) -> Iterator[ServerEvent]:
        """A finite SSE answer (e.g. the advisor's), event by event; see `client.sse` for live streams."""
        import httpx

        from trainpilot.client.sse import parse

        try:
            with (
                httpx.Client(**self._options()) as http,
                http.stream(method, path, **kwargs) as response,
            ):
                if response.status_code >= 400:
                    raise http_error(f"{method} {path}", response.status_code, response.read())
                yield from parse(response.iter_lines())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.HTTPError) -> TransportError:
        reason = str(exc) or type(exc).__name__
        return TransportError(f"cannot reach the trainpilot server at {self.url}: {reason}")


def _answer(method: str, path: str, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise http_error(f"{method} {path}", response.status_code, response.content)
    is_json = response.headers.get("content-type", "").startswith("application/json")
    return response.json() if is_json else None
