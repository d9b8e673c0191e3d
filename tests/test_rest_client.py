"""client.rest: one Bearer header, one reading of an error answer, every failure a TransportError."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trainpilot.client import ApiClient, auth_headers, http_error, run_path
from trainpilot.exceptions import TransportError
from trainpilot.server.runner import free_port


def test_a_token_is_a_bearer_header_and_no_token_is_no_header() -> None:
    assert auth_headers("t0k") == {"Authorization": "Bearer t0k"}
    assert auth_headers(None) == {} and auth_headers("") == {}


def test_a_run_id_is_one_path_segment_whatever_it_holds() -> None:
    assert run_path("r-1") == "/api/runs/r-1"
    assert run_path("a b?c#d%e/f", "/ask") == "/api/runs/a%20b%3Fc%23d%25e%2Ff/ask"
    assert run_path("é") == "/api/runs/%C3%A9"


def test_an_error_answer_reads_in_the_servers_words_with_its_code() -> None:
    body = orjson.dumps({"error": {"code": "not_found", "message": "no run 'x'"}})
    error = http_error("GET /api/runs/x", 404, body)
    assert str(error) == "GET /api/runs/x: HTTP 404: no run 'x'"
    assert (error.status, error.code) == (404, "not_found")


@pytest.mark.parametrize(
    "body", [b"<html>bad gateway</html>", b'{"detail": "x"}', b'["error"]', b'{"error": "x"}']
)
def test_an_answer_not_from_our_server_reads_as_its_start_without_a_code(body: bytes) -> None:
    error = http_error("POST /x", 502, body)
    assert str(error) == f"POST /x: HTTP 502: {body.decode()}"
    assert (error.status, error.code) == (502, None)


async def _echo(request: Request) -> JSONResponse:
    if request.path_params["name"] == "gone":
        return JSONResponse({"error": {"code": "not_found", "message": "gone"}}, status_code=404)
    return JSONResponse({"authorization": request.headers.get("authorization")})


def test_a_call_presents_the_token_unless_the_call_forwards_its_own() -> None:
    app = Starlette(routes=[Route("/{name}", _echo)])
    api = ApiClient("http://test", "t0k", transport=httpx.ASGITransport(app=app))

    async def calls() -> tuple[object, object]:
        own = await api.acall("GET", "/ok")
        forwarded = await api.acall("GET", "/ok", headers={"authorization": "Bearer theirs"})
        return own, forwarded

    assert asyncio.run(calls()) == ({"authorization": "Bearer t0k"}, {"authorization": "Bearer theirs"})
    with pytest.raises(TransportError, match="GET /gone: HTTP 404: gone") as caught:
        asyncio.run(api.acall("GET", "/gone"))
    assert caught.value.run_not_found


def test_a_server_that_is_not_there_is_a_transport_error_without_a_status() -> None:
    api = ApiClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(TransportError, match="cannot reach the trainpilot server at") as caught:
        api.call("GET", "/api/runs")
    assert (caught.value.status, caught.value.code) == (None, None)


def test_the_client_package_exports_the_rest_client_and_its_helpers() -> None:
    import trainpilot.client

    assert sorted(trainpilot.client.__all__) == [
        "ApiClient",
        "auth_headers",
        "env_token",
        "http_error",
        "run_path",
    ]
