"""Network faults between the SDK and the server (issue 9, item 3): refused connections, resets, slow
answers and 5xx never stall the training loop nor grow its memory without bound, the spool keeps to
its disk budget, and what was kept arrives exactly once when a server is reachable again."""

from __future__ import annotations

import gc
import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import trainpilot
from tests.conftest import LiveServer, spooled_metrics, wait_until
from trainpilot.sdk.sender import SPILL_AT
from trainpilot.server.runner import free_port


class CollectorClock:
    """A `gc.callbacks` entry adding up the seconds spent in garbage collections."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


class BadServer:
    """A TCP server that misbehaves in one way: `reset`, `slow` (3 s, then a 503) or `500`."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                if self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closing with linger 0 sends a RST
                if self.mode == "slow" and self._stop.wait(3):
                    return
                status = b"503 Service Unavailable" if self.mode == "slow" else b"500 Internal Server Error"
                body = b'{"error": {"code": "error", "message": "on purpose"}}'
                conn.sendall(
                    b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
                )
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture(params=["refused", "reset", "slow", "500"])
def bad_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"  # nothing listens there
        return
    server = BadServer(request.param)
    yield f"http://127.0.0.1:{server.port}"
    server.close()


def test_a_bad_network_never_stalls_log_and_nothing_is_lost_once_a_server_is_up(
    bad_url: str, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "client")
    run = trainpilot.init(project="net", server=bad_url, data_dir=data_dir, run_id="net", control=False)
    steps, worst = 20_000, 0.0
    collector = CollectorClock()
    gc.callbacks.append(collector)
    try:
        for step in range(steps):
            collected, started = collector.total, time.perf_counter()
            run.log({f"m{i}": step * 0.001 + i for i in range(8)})
            worst = max(worst, time.perf_counter() - started - (collector.total - collected))
    finally:
        gc.callbacks.remove(collector)
    # log() only queues: the slow server's 3 s answer must not show up in the training loop. The bound
    # is half that answer, so it fails only if log() waited on the network, not when a shared CI machine
    # leaves this thread unscheduled for a few hundred ms (seen: 0.43 s on a refused port, where no
    # network wait exists). A full garbage collection of the whole session's heap is taken out too.
    assert worst < 1.5, f"log() blocked for {worst:.3f} s"
    wait_until(lambda: run._sender.queue.qsize() == 0, timeout=60, what="the sender to take everything")
    assert run.delivered == 0
    run.finish(timeout=1)  # the server is still bad: everything stays in the spool, on disk

    live = LiveServer(tmp_path / "server").start()
    try:
        # The next process on this data dir replays the spool left behind.
        trainpilot.init(project="net", server=live.url, data_dir=data_dir, run_id="next").finish()
        params = {"run_id": "net", "keys": "m0", "max_points": 100_000}

        def stored() -> int:
            response = httpx.get(f"{live.url}/api/metrics/history", params=params, timeout=5)
            return int(response.json()["series"]["m0"]["total"]) if response.status_code == 200 else 0

        wait_until(lambda: stored() == steps, timeout=60, what="the spooled points to arrive")
        series = httpx.get(f"{live.url}/api/metrics/history", params=params, timeout=5).json()["series"]["m0"]
        assert series["step"] == list(range(steps))  # each once, in order
        assert httpx.get(f"{live.url}/api/runs/net", timeout=5).json()["status"] == "finished"
    finally:
        live.stop()


def test_the_spool_keeps_to_its_disk_budget_dropping_the_oldest_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRAINPILOT_SPOOL_MAX_MB", "1")
    data_dir = str(tmp_path / "client")
    down = f"http://127.0.0.1:{free_port()}"
    run = trainpilot.init(project="net", server=down, data_dir=data_dir, run_id="budget", control=False)
    steps = 60_000  # about 8 MB of events against a 1 MB budget
    with caplog.at_level(logging.WARNING, logger="trainpilot"):
        for step in range(steps):
            run.log({f"metric_{i}": step * 0.001 + i for i in range(8)})
        wait_until(lambda: run._sender.queue.qsize() == 0, timeout=60, what="the sender to take everything")
        spool = run._sender.spool.path
        run.finish(timeout=1)
    assert spool.stat().st_size <= 2**20
    assert run.dropped > steps / 2
    assert any("reached its disk budget" in r.getMessage() for r in caplog.records)
    assert run._sender.queue.qsize() <= SPILL_AT

    live = LiveServer(tmp_path / "server").start()
    try:
        trainpilot.init(project="net", server=live.url, data_dir=data_dir, run_id="next").finish()
        params = {"run_id": "budget", "keys": "metric_0", "max_points": 100_000}

        def steps_stored() -> list[int]:
            response = httpx.get(f"{live.url}/api/metrics/history", params=params, timeout=5)
            return list(response.json()["series"]["metric_0"]["step"]) if response.status_code == 200 else []

        wait_until(
            lambda: bool(steps_stored()) and steps_stored()[-1] == steps - 1, timeout=60, what="replay"
        )
        kept = steps_stored()
        # The newest points were kept, contiguous up to the last; the dropped ones are all counted
        # (the run's 'running' status event was among the oldest and dropped too).
        assert kept == list(range(steps - len(kept), steps))
        assert run.dropped in (steps - len(kept), steps - len(kept) + 1)
    finally:
        live.stop()


OLD_TOKEN = """
    import sys, trainpilot
    url, data_dir = sys.argv[1], sys.argv[2]
    run = trainpilot.init(project="net", server=url, data_dir=data_dir, run_id="gone", token="old")
    for step in range(100):
        run.log({"loss": float(step)}, step=step)
    run.finish(timeout=2)
"""


def test_a_refused_token_keeps_every_batch_warns_once_and_resends_once_the_token_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's token changed under two runs: one whose process ends meanwhile and one that
    goes on. Each says once, naming the server, that its token is refused and how to fix it; nothing
    is dropped; when the server takes their token again, everything arrives, each point once."""
    monkeypatch.setattr("trainpilot.sdk.sender._warned", set())
    live = LiveServer(tmp_path / "server", token="new").start()
    client = tmp_path / "client"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINPILOT_")}
    try:
        ended = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(OLD_TOKEN), live.url, str(client)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ended.returncode == 0, ended.stderr
        warnings = [line for line in ended.stderr.splitlines() if live.url in line]
        assert len(warnings) == 1, ended.stderr
        said = warnings[0].split(str(client))[0]  # not the spool's path, which holds this test's name
        assert "refused the token" in said and "TRAINPILOT_TOKEN" in said
        assert spooled_metrics(client) == 100  # kept on disk, not dropped

        with caplog.at_level(logging.WARNING, logger="trainpilot"):
            run = trainpilot.init(
                project="net", server=live.url, data_dir=str(client), run_id="on", token="old", control=False
            )
            for step in range(100):
                run.log({"loss": float(step)}, step=step)
            wait_until(lambda: spooled_metrics(client) == 200, what="the live run to spool")
        refused = [r.getMessage() for r in caplog.records if live.url in r.getMessage()]
        assert len(refused) == 1 and "refused the token" in refused[0], refused

        live.stop()
        live.env["TRAINPILOT_TOKEN"] = "old"  # the server takes the runs' token again
        live.start()
        run.finish(timeout=60)
        headers = {"Authorization": "Bearer old"}

        def steps(run_id: str) -> list[int]:
            params = {"run_id": run_id, "keys": "loss", "max_points": 1000}
            answer = httpx.get(f"{live.url}/api/metrics/history", params=params, headers=headers, timeout=5)
            series = answer.json().get("series", {}).get("loss") if answer.status_code == 200 else None
            return list(series["step"]) if series else []

        assert steps("on") == list(range(100))
        wait_until(lambda: steps("gone") == list(range(100)), what="the ended run's spool to be replayed")
        answer = httpx.get(f"{live.url}/api/runs/gone", headers=headers, timeout=5)
        assert answer.json()["status"] == "finished"
        assert run.dropped == 0
    finally:
        live.stop()
