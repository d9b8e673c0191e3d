"""The attacks a web page can make on the default server (loopback, no token): DNS rebinding (a foreign
Host), cross-site WebSocket hijacking and request forgery (a foreign Origin, a "simple" body). Each
refused, and nothing stored; scripts without an Origin keep working. Tried on the app in this process,
and once on a real server, to see the refusal of a WebSocket handshake reach a client over the wire."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import APP_URL, LiveServer, app_socket, create_run, in_process, metrics_batch
from trainpilot.server.guard import Guard, server_names
from trainpilot.settings import Settings

EVIL = "http://evil.example"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
PORT = httpx.URL(APP_URL).port
SETTINGS = {"allowed_hosts": "trainpilot.internal,*.lab.example", "cors_origins": "http://dash.example"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with in_process(tmp_path_factory.mktemp("security"), **SETTINGS) as app:
        yield app


def stored(client: TestClient, run_id: str) -> int:
    response = client.get("/api/metrics/history", params={"run_id": run_id})
    return sum(s["total"] for s in response.json()["series"].values())


def error(response: httpx.Response) -> dict[str, str]:
    body: dict[str, str] = response.json()["error"]
    return body


def ws_refusal(client: TestClient, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The HTTP answer to a WebSocket handshake that the server refuses before it opens."""
    with pytest.raises(WebSocketDenialResponse) as refused, app_socket(client, headers=headers):
        pass
    return refused.value.status_code, refused.value.json().get("error", {})


def test_a_websocket_from_a_foreign_origin_is_refused_before_it_opens(client: TestClient) -> None:
    for origin in (EVIL, "null", f"http://127.0.0.1:{PORT + 1}", f"http://localhost:{PORT}"):
        status, body = ws_refusal(client, {"origin": origin})
        assert status == 403 and body["code"] == "origin_not_allowed", origin
        assert "TRAINPILOT_CORS_ORIGINS" in body["message"]
    for origin in (None, f"http://127.0.0.1:{PORT}", "http://dash.example"):
        with app_socket(client, headers={"origin": origin} if origin else {}) as sock:
            sock.send('{"op": "ping"}')
            assert orjson.loads(sock.recv(timeout=5))["op"] == "pong"


def test_a_foreign_host_name_is_refused_on_every_path(client: TestClient) -> None:
    create_run(client, "rebind")
    for path in ("/api/runs", "/api/system/health", "/api/stream/metrics", "/", "/mcp"):
        response = client.get(path, headers={"Host": f"evil.example:{PORT}"})
        assert response.status_code == 400, path
        assert error(response)["code"] == "host_not_allowed"
        assert "TRAINPILOT_ALLOWED_HOSTS" in error(response)["message"]
    control = client.post(
        "/api/training/control",
        json={"run_id": "rebind", "action": "pause"},
        headers={"Host": "evil.example"},
    )
    assert control.status_code == 400
    for host in (
        f"127.0.0.1:{PORT}",
        f"localhost:{PORT}",
        "LOCALHOST",
        "[::1]:1",
        "trainpilot.internal",
        "gpu.lab.example:443",
    ):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    mcp = client.post(
        "/mcp",
        json=initialize,
        headers={"Host": "trainpilot.internal", "Accept": "application/json, text/event-stream"},
    )
    assert mcp.status_code == 200 and "serverInfo" in mcp.text, mcp.text
    for host in ("lab.example", "evil.example.trainpilot.internal", "127.0.0.2"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 400, host
    status, body = ws_refusal(client, {"host": "evil.example"})
    assert status == 400 and body["code"] == "host_not_allowed"


def test_a_refused_websocket_handshake_reaches_a_real_client_as_an_http_answer(tmp_path: Path) -> None:
    """uvicorn sends the refusal as the handshake's HTTP answer, with its JSON body, and opens nothing."""
    live = LiveServer(tmp_path / "data", **SETTINGS).start()
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{live.port}/api/ws", open_timeout=5, origin=EVIL)  # type: ignore[arg-type]
        answer = refused.value.response
        assert answer.status_code == 403
        assert orjson.loads(answer.body or b"{}")["error"]["code"] == "origin_not_allowed"
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as raw:
            raw.sendall(
                b"GET /api/ws HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            reply = raw.recv(65536)
        assert reply.startswith(b"HTTP/1.1 400") and b"host_not_allowed" in reply
    finally:
        live.stop()


def test_simple_bodies_and_foreign_origins_change_nothing(client: TestClient) -> None:
    create_run(client, "csrf")
    events = orjson.dumps(metrics_batch(0, 5))
    for kind in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = {"Content-Type": kind} if kind else {}
        paths = ("/api/runs/csrf/events", "/api/runs", "/api/training/control", "/api/runs/csrf/ask")
        for path in (*paths, "/api/runs/csrf/ask/prepare"):
            response = client.post(path, content=events, headers=headers)
            assert response.status_code == 415, (path, kind)
            assert error(response)["code"] == "unsupported_media_type"
            assert "application/json" in error(response)["message"]
        media = client.post("/api/runs/csrf/media", params={"name": "x"}, content=PNG, headers=headers)
        assert media.status_code == 415, kind
    foreign = client.post(
        "/api/runs/csrf/events",
        content=events,
        headers={"Content-Type": "application/json", "Origin": EVIL},
    )
    assert foreign.status_code == 403 and error(foreign)["code"] == "origin_not_allowed"
    control = client.post(
        "/api/training/control", json={"run_id": "csrf", "action": "stop"}, headers={"Origin": EVIL}
    )
    assert control.status_code == 403
    for headers, status in (({"Origin": EVIL}, 403), ({"Host": "evil.example"}, 400)):  # a page, a rebinding
        prepare = client.post("/api/runs/csrf/ask/prepare", json={}, headers=headers)
        assert prepare.status_code == status, headers
    assert stored(client, "csrf") == 0
    kinds = [e["kind"] for e in client.get("/api/runs/csrf/insights").json()["insights"]]
    assert kinds == []
    # the same requests from a script (no Origin) or the server's own page are taken
    own = {"Content-Type": "application/json", "Origin": APP_URL}
    assert client.post("/api/runs/csrf/events", content=events, headers=own).status_code == 200
    typed = client.post(
        "/api/runs/csrf/media", params={"name": "x"}, content=PNG, headers={"Content-Type": "image/png"}
    )
    assert typed.status_code == 201
    assert stored(client, "csrf") == 10  # 5 steps of 2 metrics


def test_a_foreign_page_cannot_read_the_stream_or_the_api(client: TestClient) -> None:
    """EventSource and fetch send the page's Origin: the server refuses, and sends no CORS grant."""
    response = client.get("/api/stream/metrics", headers={"Origin": EVIL})
    assert response.status_code == 403 and "access-control-allow-origin" not in response.headers
    runs = client.get("/api/runs", headers={"Origin": EVIL})
    assert runs.status_code == 403 and "access-control-allow-origin" not in runs.headers


def test_wildcards_are_refused_without_a_token(tmp_path: Path) -> None:
    for flag in ("--allowed-hosts", "--cors-origins"):
        done = subprocess.run(
            [sys.executable, "-m", "trainpilot.cli", "serve", "--data-dir", str(tmp_path), flag, "*"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0 and "without a token" in done.stderr, done.stderr
    guard = Guard(Settings(allowed_hosts="*", token="secret"))
    assert guard.refusal({"type": "http", "method": "GET", "headers": [(b"host", b"anything")]}) is None


def test_a_server_on_every_address_answers_to_the_machines_own_names() -> None:
    names = server_names(Settings(host="0.0.0.0", token="secret"))
    assert socket.gethostname().lower() in names and "127.0.0.1" in names
    assert socket.gethostname().lower() not in server_names(Settings())
