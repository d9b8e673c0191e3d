"""A training process that dies never leaves its run `running` forever (issue 9, item 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, create_run, metrics_batch, sse_events, wait_until

TIMEOUT_S = "1.5"  # the server's run timeout in these tests; the SDK heartbeats every 0.3 s

TRAINER = """
    import sys, time, trainpilot
    from trainpilot.sdk.sender import Flush
    url, data_dir, run_id, mode = sys.argv[1:5]
    run = trainpilot.init(project="live", server=url, data_dir=data_dir, run_id=run_id)
    for step in range(500):
        run.log({"loss": 1.0 / (step + 1)})
    flush = Flush()
    run._sender.queue.put(flush)  # wait until all 500 points are delivered
    flush.done.wait(30)
    print("logged", flush=True)
    if mode == "raise":
        raise RuntimeError("CUDA out of memory (on purpose)")
    time.sleep(60)  # quiet but alive (a long validation), until the test kills it
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "data", run_timeout_s=TIMEOUT_S).start()
    yield server
    server.stop()


def start_trainer(url: str, tmp_path: Path, run_id: str, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TRAINPILOT_RUN_HEARTBEAT_S": "0.3"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(TRAINER), url, str(tmp_path / "client"), run_id, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def status(url: str, run_id: str) -> str:
    value: str = httpx.get(f"{url}/api/runs/{run_id}", timeout=5).json()["status"]
    return value


def points(url: str, run_id: str) -> int:
    params = {"run_id": run_id, "keys": "loss", "max_points": 10}
    total: int = httpx.get(f"{url}/api/metrics/history", params=params, timeout=5).json()["series"]["loss"][
        "total"
    ]
    return total


def test_a_quiet_live_run_stays_running_and_a_killed_one_is_marked_lost(
    live: LiveServer, tmp_path: Path
) -> None:
    proc = start_trainer(live.url, tmp_path, "killed", "sleep")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "logged"
        time.sleep(3 * float(TIMEOUT_S))  # twice the timeout without a metric: the heartbeat keeps it
        assert status(live.url, "killed") == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: status(live.url, "killed") == "lost", timeout=20, what="the run to be marked lost")
    finally:
        proc.kill()
        proc.communicate()
    assert points(live.url, "killed") == 500  # everything up to the crash is there
    assert httpx.get(f"{live.url}/api/runs/killed", timeout=5).json()["last_step"] == 499


def test_an_unhandled_exception_marks_the_run_failed(live: LiveServer, tmp_path: Path) -> None:
    proc = start_trainer(live.url, tmp_path, "crashed", "raise")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "CUDA out of memory (on purpose)" in err
    assert status(live.url, "crashed") == "failed"
    assert points(live.url, "crashed") == 500


def test_a_lost_run_heard_from_again_is_running_again(live: LiveServer) -> None:
    with live.client() as client:
        create_run(client, "partitioned")
        client.post("/api/runs/partitioned/events", json=metrics_batch(0, 10)).raise_for_status()
        wait_until(lambda: status(live.url, "partitioned") == "lost", timeout=20, what="lost")
        refused = client.post("/api/training/control", json={"run_id": "partitioned", "action": "pause"})
        assert refused.status_code == 409 and "lost" in refused.json()["error"]["message"]
        client.post("/api/runs/partitioned/events", json={"events": []}).raise_for_status()  # a heartbeat
        assert status(live.url, "partitioned") == "running"
    found = sse_events(live.url, {"run_id": "partitioned", "kinds": "status", "after": "0"}, count=3)
    statuses = [e.data["data"] for e in found]
    assert [s["status"] for s in statuses] == ["created", "lost", "running"]
    assert "nothing heard from the run for 1.5 s" in statuses[1]["reason"]
