"""A minimal HTTP/1.1 client connection: one request at a time on one kept-alive socket.

The sender posts a batch per pass from a thread of the training process, so every microsecond of
CPU a request costs is taken from training. `http.client` parses each answer's headers with the
`email` package; this writes a request in one `sendall` and reads the answer with a few `recv`
calls: less than half the CPU per batch (`python bench/transport_cost.py`). It sends only what the
SDK sends (a POST with a body) and reads what a server or proxy may answer one with (Content-Length,
chunked and until-close bodies, 1xx notices, HTTP/1.0).
"""

from __future__ import annotations

import socket
import ssl

MAX_HEAD = 64 * 1024  # an answer's status line and headers; more is not a server we talk to


class Disconnected(ConnectionError):
    """The server closed the connection before its answer began: a kept-alive socket it let go."""


class ProtocolError(OSError):
    """The answer is not HTTP/1.x as the SDK reads it."""


class Connection:
    def __init__(self, host: str, port: int | None, https: bool, connect_timeout: float, timeout: float):
        port = port or (443 if https else 80)
        self.host_header = (host if ":" not in host else f"[{host}]") + (
            "" if port == (443 if https else 80) else f":{port}"
        )
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def post(self, target: str, headers: str, body: bytes) -> tuple[int, bytes, bool]:
        """(status, body, will_close). `headers` is ready-made ``Name: value\\r\\n`` lines."""
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.host_header}\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode("latin-1") + body)
        while True:
            version, status, fields = self._head()
            if not 100 <= status < 200:
                break  # a 1xx notice precedes the real answer
        close = fields.get("connection", "").lower() == "close" or (
            version == "HTTP/1.0" and fields.get("connection", "").lower() != "keep-alive"
        )
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return status, self._chunked(), close
        if "content-length" in fields:
            try:
                length = int(fields["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {fields['content-length']!r}") from None
            return status, self._exactly(length), close
        if status == 204:
            return status, b"", close
        return status, self._until_close(), True

    # -- reading ------------------------------------------------------------------------------------

    def _fill(self, started: bool = True) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            if not started:
                raise Disconnected("the server closed the connection before answering")
            raise ProtocolError("the server closed the connection mid-answer")
        self.buffer += chunk

    def _head(self) -> tuple[str, int, dict[str, str]]:
        started = bool(self.buffer)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("the answer's headers exceed 64 KiB")
            self._fill(started)
            started = True
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        return version, int(code), fields

    def _exactly(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("a chunk's size line exceeds 64 KiB")
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")

    def _until_close(self) -> bytes:
        while chunk := self.sock.recv(65536):
            self.buffer += chunk
        body = bytes(self.buffer)
        self.buffer.clear()
        return body
