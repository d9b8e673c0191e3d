"""The SDK against real servers: delivery from another process, outages, kill -9, control, spools."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import trainpilot
from tests.conftest import LiveServer, free_port, sse_events, wait_for_ack


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stored_steps(url: str, run_id: str, key: str = "loss") -> list[int]:
    try:
        body = httpx.get(
            f"{url}/api/metrics/history",
            timeout=5,
            params={"run_id": run_id, "keys": key, "max_points": 100_000},
        ).json()
    except httpx.HTTPError:
        return []
    series = body.get("series", {}).get(key)
    return list(series["step"]) if series else []


def run_script(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


LOGGER = """
    import sys, time, trainpilot
    url, data_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = trainpilot.init(project="sdk", server=url, data_dir=data_dir, run_id=sys.argv[4])
    for step in range(steps):
        run.log({"loss": 1.0 / (step + 1), "acc": step / steps})
        time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 0)
    run.finish(timeout=60)
    print(run.id, run.delivered)
"""


def test_events_logged_in_another_process_reach_an_sse_subscriber_in_order(
    server: LiveServer, tmp_path: Path
) -> None:
    result: list[Any] = []
    reader = threading.Thread(
        target=lambda: result.extend(
            sse_events(
                server.url, {"run_id": "other", "kinds": "metrics", "after": "0"}, count=200, timeout=30
            )
        )
    )
    reader.start()
    run_script(LOGGER, server.url, str(tmp_path / "client"), "200", "other")
    reader.join(30)
    assert [e.data["step"] for e in result] == list(range(200))
    assert [e.data["data"]["loss"] for e in result[:2]] == [1.0, 0.5]


def test_points_logged_while_the_server_is_down_arrive_exactly_once_when_it_starts(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server")
    run = trainpilot.init(project="sdk", server=live.url, data_dir=str(tmp_path / "client"))
    for step in range(300):
        run.log({"loss": float(step)})
    wait_until(lambda: run._sender.spool.path.exists(), what="the spool file")
    live.start()
    for step in range(300, 400):
        run.log({"loss": float(step)})
    run.finish(timeout=60)
    try:
        assert stored_steps(live.url, run.id) == list(range(400))
        replay = sse_events(live.url, {"after": "0", "run_id": run.id, "kinds": "metrics"}, count=400)
        assert len({e.data["seq"] for e in replay}) == 400
    finally:
        live.stop()


def test_kill_9_of_the_server_mid_run_loses_and_duplicates_nothing(
    server: LiveServer, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(LOGGER),
            server.url,
            str(tmp_path / "client"),
            "3000",
            "killed",
            "0.001",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(stored_steps(server.url, "killed")) > 300, what="the first points")
    server.stop(kill=True)
    time.sleep(0.5)
    server.start()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert stored_steps(server.url, "killed") == list(range(3000))
    assert out.split()[1] == str(3000 + 2)  # every metric plus the running and finished status events


def test_control_reaches_a_running_loop_and_each_ack_is_on_the_stream(
    server: LiveServer, tmp_path: Path
) -> None:
    run = trainpilot.init(project="sdk", server=server.url, data_dir=str(tmp_path / "client"))
    lr_seen: list[tuple[float, str]] = []
    run.on_control("set_lr", lambda value: lr_seen.append((value, threading.current_thread().name)))
    state = {"step": 0}

    def loop() -> None:
        while not run.should_stop:
            run.wait_if_paused()
            run.log({"loss": 1.0})
            state["step"] += 1
            time.sleep(0.002)
        run.finish()

    trainer = threading.Thread(target=loop, name="training")
    trainer.start()
    api = httpx.Client(base_url=server.url, timeout=10)

    def command(action: str, value: float | None = None) -> dict[str, Any]:
        reply = api.post("/api/training/control", json={"run_id": run.id, "action": action, "value": value})
        return wait_for_ack(server.url, run.id, reply.json()["command_id"])

    wait_until(lambda: state["step"] > 5, what="the loop to run")
    assert command("pause")["status"] == "applied"
    paused_at = state["step"]
    time.sleep(0.4)
    assert state["step"] == paused_at
    assert api.get(f"/api/runs/{run.id}").json()["status"] == "paused"
    assert command("set_lr", 0.02)["status"] == "applied"
    assert lr_seen == [(0.02, "training")]
    rejected = command("checkpoint")
    assert rejected["status"] == "rejected" and "handler" in rejected["reason"]
    assert command("pause")["status"] == "rejected"
    assert command("resume")["status"] == "applied"
    wait_until(lambda: state["step"] > paused_at + 5, what="steps after resume")
    assert command("stop")["status"] == "applied"
    trainer.join(20)
    assert not trainer.is_alive()
    assert api.get(f"/api/runs/{run.id}").json()["status"] == "stopped"
    api.close()


def test_log_never_raises_on_odd_values(server: LiveServer, tmp_path: Path) -> None:
    class Scalar:  # like a 0-d tensor or numpy scalar: has __float__
        def __float__(self) -> float:
            return 2.5

    run = trainpilot.init(project="sdk", server=server.url, data_dir=str(tmp_path / "client"))
    run.log(
        {
            "ok": 1,
            "flag": True,
            "text": "high",
            "none": None,
            "nested": {"a": 1.0, "b": {"c": 2.0}},
            "nan": float("nan"),
            "inf": float("inf"),
            "obj": Scalar(),
            7: 3.0,
        }
    )
    run.log(None)  # type: ignore[arg-type]
    run.finish(timeout=30)
    current = httpx.get(f"{server.url}/api/metrics/current", params={"run_id": run.id}).json()["metrics"]
    assert {k: v["value"] for k, v in current.items()} == {
        "ok": 1.0,
        "flag": 1.0,
        "nested/a": 1.0,
        "nested/b/c": 2.0,
        "obj": 2.5,
        "7": 3.0,
    }
    insights = sse_events(server.url, {"after": "0", "run_id": run.id, "kinds": "insight"}, count=1)
    assert set(insights[0].data["data"]["evidence"]["metrics"]) == {"nan", "inf"}  # None: skipped, warned


def test_serve_true_runs_the_server_inside_the_process(tmp_path: Path) -> None:
    port = free_port()
    run = trainpilot.init(project="embedded", serve=True, port=port, data_dir=str(tmp_path / "data"))
    try:
        assert run.url == f"http://127.0.0.1:{port}"
        for step in range(50):
            run.log({"loss": float(step)})
        reply = httpx.post(
            f"{run.url}/api/training/control", json={"run_id": run.id, "action": "pause"}
        ).json()
        wait_until(lambda: bool(run._commands), what="the command to reach the run")
        run.wait_if_paused(timeout=0.2)
        assert run.paused
        assert wait_for_ack(run.url, run.id, reply["command_id"])["status"] == "applied"
        run.finish()
        assert stored_steps(run.url, run.id) == list(range(50))
    finally:
        run.finish()
        run._server.stop()


def test_a_spool_left_by_a_dead_process_is_replayed_by_the_next_one(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server")
    client_dir = str(tmp_path / "client")
    script = """
        import sys, trainpilot
        run = trainpilot.init(project="sdk", server=sys.argv[1], data_dir=sys.argv[2], run_id="orphan")
        for step in range(120):
            run.log({"loss": float(step)})
        run.finish(timeout=1)
    """
    run_script(script, live.url, client_dir)
    spool = tmp_path / "client" / "spool" / "orphan.jsonl"
    assert spool.exists() and spool.stat().st_size > 0
    live.start()
    try:
        later = trainpilot.init(project="sdk", server=live.url, data_dir=client_dir)
        wait_until(
            lambda: stored_steps(live.url, "orphan") == list(range(120)), what="the orphan spool replay"
        )
        later.finish()
        wait_until(lambda: not spool.exists() or spool.stat().st_size == 0, what="the spool to be emptied")
    finally:
        live.stop()


def test_an_exception_in_a_with_block_marks_the_run_failed(server: LiveServer, tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        trainpilot.init(project="sdk", server=server.url, data_dir=str(tmp_path / "client")) as run,
    ):
        run.log({"loss": 1.0})
        raise RuntimeError("boom")
    assert httpx.get(f"{server.url}/api/runs/{run.id}").json()["status"] == "failed"
