"""What a web page may ask of this server: the Host, Origin and body-type checks in front of every route.

The default server listens on loopback with no token, and every page the user opens can reach
loopback. Three attacks follow, and one check each (docs/api.md#security):

- **DNS rebinding**: a page rebinds its own name to 127.0.0.1, and its requests, same-origin to the
  browser, carry ``Host: evil.example``. A request whose Host is not one of this server's names is
  refused with 400 (`allowed_hosts`).
- **Cross-site WebSocket hijacking**: browsers apply no CORS to WebSockets, but the handshake carries
  the page's ``Origin``. So does every cross-origin ``fetch`` and every POST. A request with an Origin
  other than the server's own (the same host and port as its Host) or one of
  ``TRAINPILOT_CORS_ORIGINS`` is refused with 403. Scripts, the CLI and the SDK send no Origin.
- **Cross-site request forgery**: a page may POST a "simple" body (``text/plain``, a form,
  multipart, or none typed at all) to any origin without a preflight. A state-changing request
  whose body is not JSON (or, for media, image bytes) is refused with 415 before it is read.

The checks read the request's headers once, before routing; an ingest request's check costs three to
five times building a dict of its headers (bench/guard_cost.py, measured side by side).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from trainpilot.server.errors import error_response
from trainpilot.settings import LOOPBACK_NAMES, Settings
from trainpilot.wire import MEDIA_CONTENT_TYPES

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MEDIA_PATH = re.compile(r"^/api/runs/[^/]+/media$")
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


def split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def server_names(settings: Settings) -> frozenset[str]:
    """The names this server answers to: loopback, the bound address, and TRAINPILOT_ALLOWED_HOSTS.

    Bound to every address (0.0.0.0, ::), the machine's own names and interface addresses count too,
    so that `http://gpu-box:8765` works there without configuration.
    """
    names = {*LOOPBACK_NAMES, settings.host.lower()}
    if settings.host in WILDCARD_ADDRESSES:
        names |= _machine_names()
    names |= set(split_list(settings.allowed_hosts))
    return frozenset(_hostname(name.lower()) for name in names)


def _machine_names() -> set[str]:
    import psutil

    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                names.add(address.address.split("%")[0].lower())
    return names


class Guard:
    """Decides, from a request's headers alone, whether it may reach the routes at all."""

    def __init__(self, settings: Settings) -> None:
        self.names = server_names(settings)
        self.any_host = "*" in self.names
        self.suffixes = tuple(name[1:] for name in self.names if name.startswith("*."))
        self.origins = frozenset(origin.rstrip("/").lower() for origin in split_list(settings.cors_origins))
        self.any_origin = "*" in self.origins
        self._hosts: dict[bytes, bool] = {}

    def refusal(self, scope: Scope) -> Refusal | None:
        host = origin = kind = b""
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                kind = value
            elif name == b"content-length":
                has_body = value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if host and not self.host_allowed_cached(host):
            return Refusal(
                400,
                "host_not_allowed",
                f"Host {host.decode('latin-1').lower()!r} is not a name of this server: add it to "
                "TRAINPILOT_ALLOWED_HOSTS (--allowed-hosts) if you reach the server by that name",
            )
        if origin and not self.origin_allowed(
            origin.decode("latin-1").lower(), host.decode("latin-1").lower()
        ):
            return Refusal(
                403,
                "origin_not_allowed",
                f"requests from the page at {origin.decode('latin-1')!r} are refused: add its origin to "
                "TRAINPILOT_CORS_ORIGINS (--cors-origins) to allow it",
            )
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and has_body:
            return self.body_refusal(scope["path"], kind.decode("latin-1").split(";")[0].strip().lower())
        return None

    def host_allowed_cached(self, host: bytes) -> bool:
        """`host_allowed`, remembered: a server sees a handful of Host values, on every request."""
        known = self._hosts.get(host)
        if known is None:
            if len(self._hosts) >= 256:  # a flood of made-up names must not grow memory
                self._hosts.clear()
            known = self._hosts[host] = self.host_allowed(host.decode("latin-1").lower())
        return known

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = _hostname(host)
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def origin_allowed(self, origin: str, host: str) -> bool:
        if self.any_origin or origin in self.origins:
            return True
        scheme, _, netloc = origin.partition("://")
        if scheme not in ("http", "https") or not host:
            return False  # "null" (sandboxed frames, file: pages) and other schemes are nobody's own
        return _without_default_port(netloc, scheme) == _without_default_port(host, scheme)

    @staticmethod
    def body_refusal(path: str, kind: str) -> Refusal | None:
        if MEDIA_PATH.match(path):
            if kind in MEDIA_CONTENT_TYPES:
                return None
            expected = (
                "an image type (image/png, image/jpeg, image/gif, image/webp) or application/octet-stream"
            )
        else:
            if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
                return None
            expected = "application/json"
        return Refusal(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'!r} is not accepted here: send {expected}",
        )


def _hostname(host: str) -> str:
    """`host:port`, `[v6]:port` or a bare name, without the port and brackets."""
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.rstrip(".")


def _without_default_port(netloc: str, scheme: str) -> str:
    default = ":443" if scheme == "https" else ":80"
    return netloc[: -len(default)] if netloc.endswith(default) else netloc


async def refuse(refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with the JSON error; a WebSocket handshake gets it as its HTTP answer where the server
    can send one (uvicorn can), else a plain 403 close."""
    response = error_response(refusal.status, refusal.code, refusal.message)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    headers: Iterable[tuple[bytes, bytes]] = response.raw_headers
    await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": list(headers)})
    await send({"type": "websocket.http.response.body", "body": response.body})
