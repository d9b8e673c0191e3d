"""A small Server-Sent-Events client that resumes: what the SDK's control listener and `tail` use.

It reconnects after any error with ``Last-Event-ID`` set to the last id it saw, so the caller sees
every event once and in order across server restarts. `stop()` from another thread ends it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from trainpilot.client.rest import auth_headers, http_error


@dataclass(frozen=True, slots=True)
class ServerEvent:
    name: str
    id: int | None
    data: Any


class SSEClient:
    def __init__(
        self,
        url: str,
        params: dict[str, str] | None = None,
        *,
        token: str | None = None,
        after: int | None = None,
        retry_s: float = 1.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        import httpx

        self.url = url
        self.params = dict(params or {})
        self.last_id = after
        self.retry_s = retry_s
        self._stop = threading.Event()
        headers = {"Accept": "text/event-stream", **auth_headers(token)}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(read_timeout_s, connect=2.0))
        self._response: Any = None

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.close()
        with contextlib.suppress(Exception):
            self._client.close()

    def __iter__(self) -> Iterator[ServerEvent]:
        while not self._stop.is_set():
            params = dict(self.params)
            headers = {}
            if self.last_id is not None:
                params["after"] = str(self.last_id)
                headers["Last-Event-ID"] = str(self.last_id)
            try:
                with self._client.stream("GET", self.url, params=params, headers=headers) as response:
                    self._response = response
                    if response.status_code != 200:
                        raise http_error(f"GET {self.url}", response.status_code, response.read())
                    for event in parse(response.iter_lines()):
                        if event.id is not None:
                            self.last_id = event.id
                        yield event
            except Exception:
                if self._stop.is_set():
                    return
            self._stop.wait(self.retry_s)


def parse(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """SSE frames from text lines (the subset trainpilot's server writes: id, event, data)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payload = "\n".join(data)
                try:
                    value: Any = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    value = payload
                yield ServerEvent(name, event_id, value)
            name, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value_text = line.partition(":")
            value_text = value_text.removeprefix(" ")
            if field == "data":
                data.append(value_text)
            elif field == "event":
                name = value_text
            elif field == "id" and value_text.isdigit():
                event_id = int(value_text)
