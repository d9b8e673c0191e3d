"""The SDK's transports on their own: dropped keep-alive connections, and what a refusal says."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import LiveServer
from trainpilot.exceptions import TransportError
from trainpilot.sdk.embedded import EmbeddedTransport
from trainpilot.sdk.transport import HttpTransport
from trainpilot.server.runner import ServerThread, free_port
from trainpilot.settings import Settings

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def one_answer_per_connection(
    listener: socket.socket, connections: list[int], requests: int, answer: bytes = OK
) -> None:
    """Answer each request on a fresh connection, then drop it unannounced (as an idle timeout does)."""
    for _ in range(requests):
        conn, _ = listener.accept()
        with conn:
            connections.append(1)
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(answer)


def test_a_connection_the_server_dropped_is_reopened_and_the_batch_delivered() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        connections: list[int] = []
        server = threading.Thread(target=one_answer_per_connection, args=(listener, connections, 3))
        server.start()
        transport = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}")
        for seq in range(3):
            transport.send("r-1", [{"seq": seq, "kind": "metrics", "step": seq, "data": {"loss": 1.0}}])
        transport.close()
        server.join(10)
    assert len(connections) == 3


def test_a_server_that_is_not_there_is_a_transport_error_without_a_status() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = HttpTransport(f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError) as caught:
        transport.send("r-1", [])
    assert caught.value.status is None and not caught.value.refused


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpTransport("ftp://example.org")


def error_answer(status: int, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = f"HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@contextlib.contextmanager
def answering(answer: bytes) -> Iterator[HttpTransport]:
    """An HTTP transport to a server that answers its one request with `answer`, whatever it was."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = threading.Thread(target=one_answer_per_connection, args=(listener, [], 1, answer))
        server.start()
        transport = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}")
        try:
            yield transport
        finally:
            transport.close()
            server.join(10)


def answered(answer: bytes) -> TransportError:
    """The error an HTTP transport raises for a batch the server answers with `answer`."""
    with answering(answer) as transport, pytest.raises(TransportError) as caught:
        transport.send("r-404", [])
    return caught.value


def test_an_unknown_run_is_told_by_the_status_and_code_not_by_the_message(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    embedded = ServerThread(Settings(port=free_port(), data_dir=str(tmp_path), log_level="warning")).start()
    try:
        for transport in (HttpTransport(shared_server.url), EmbeddedTransport(embedded)):
            with pytest.raises(TransportError) as caught:
                transport.send("never-created", [])
            assert (caught.value.status, caught.value.code) == (404, "not_found")
            assert caught.value.run_not_found and not caught.value.refused
            transport.close()
    finally:
        embedded.stop()
    assert answered(error_answer(404, "not_found", "gone")).run_not_found  # whatever the words
    unavailable = answered(error_answer(503, "store_unavailable", "no run 404 can be written: disk full"))
    assert not unavailable.run_not_found and not unavailable.refused
    bad = answered(error_answer(422, "invalid_input", "events.0.kind: unknown"))
    assert bad.refused and not bad.run_not_found
    token = answered(error_answer(401, "unauthorized", "this server needs a token"))
    assert token.token_refused and not token.refused


def body_of(answer: bytes) -> bytes:
    """What the HTTP transport reads as the body of `answer`, the server's whole reply to one POST."""
    with answering(answer) as transport:
        return transport._post("/api/runs", b"{}")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b'{"id":"r1"}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b'4;ext=1\r\n{"id\r\n7\r\n":"r1"}\r\n0\r\nX-T: 1\r\n\r\n',
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n" + b'{"id":"r1"}',
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"id":"r1"}',
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"id":"r1"}',
    ],
    ids=["content-length", "chunked", "100-continue", "http/1.0-until-close", "no-length-close"],
)
def test_every_way_a_server_or_proxy_frames_its_answer_is_read(answer: bytes) -> None:
    assert body_of(answer) == b'{"id":"r1"}'


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}"],
    ids=["not-http", "cut-short"],
)
def test_an_answer_that_is_not_http_or_is_cut_short_is_a_transport_error(answer: bytes) -> None:
    with pytest.raises(TransportError) as caught:
        body_of(answer)
    assert caught.value.status is None and not caught.value.refused


def test_a_token_that_would_end_its_header_line_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="line break"):
        HttpTransport("http://127.0.0.1:9", token="abc\r\nX-Evil: 1")
