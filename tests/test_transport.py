"""The SDK's HTTP transport on its own: keep-alive connections a server let go are reopened."""

from __future__ import annotations

import socket
import threading

import pytest

from trainpilot.exceptions import TransportError
from trainpilot.transport import HttpTransport


def one_answer_per_connection(listener: socket.socket, connections: list[int], requests: int) -> None:
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
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")


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


def test_a_server_that_is_not_there_is_a_retryable_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = HttpTransport(f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError) as caught:
        transport.send("r-1", [])
    assert caught.value.retryable


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpTransport("ftp://example.org")
