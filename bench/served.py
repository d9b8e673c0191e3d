"""A `trainpilot serve` child process for the quick checks, on a free port, stopped on exit."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(
    data_dir: str, *flags: str, cpus: set[int] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (url, process) once the server answers its health check; `flags` go to `serve`; `cpus`
    pins the server (every thread it starts) to those cores."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "trainpilot.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        os.path.join(data_dir, "server"),
        "--log-level",
        "warning",
        *flags,
    ]
    pin = None if cpus is None else lambda: os.sched_setaffinity(0, cpus)
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, preexec_fn=pin)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=1) as poll:  # one client: each new one builds an SSL context (~80 ms)
            for _ in range(600):
                try:
                    poll.get(url + "/api/system/health")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
        yield url, process
    finally:
        process.terminate()
        process.wait(10)
