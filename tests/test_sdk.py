"""The SDK against real servers: delivery from another process, outages, kill -9, control, spools."""

from __future__ import annotations

import logging
import math
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

import trainpilot
from tests.conftest import LiveServer, spooled_metrics, sse_events, wait_for_ack, wait_until
from trainpilot.client.sse import ServerEvent, SSEClient, parse
from trainpilot.server.runner import free_port


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def history(url: str, run_id: str, key: str = "loss") -> dict[str, Any]:
    """The run's full series of `key` (steps, values, total), or an empty one if there is none yet."""
    empty: dict[str, Any] = {"step": [], "value": [], "total": 0}
    try:
        response = httpx.get(
            f"{url}/api/metrics/history",
            timeout=5,
            params={"run_id": run_id, "keys": key, "max_points": 100_000},
        )
    except httpx.HTTPError:
        return empty
    if response.status_code != 200:
        return empty
    series: dict[str, Any] = response.json()["series"].get(key) or empty
    return series


def stored_steps(url: str, run_id: str, key: str = "loss") -> list[int]:
    return list(history(url, run_id, key)["step"])


def run_info(url: str, run_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/api/runs/{quote(run_id, safe='')}", timeout=5).json()
    return body


def replay(url: str, run_id: str) -> list[ServerEvent]:
    """Every stored event of the run, read from the stream from the start up to the run's last event."""
    last = run_info(url, run_id)["last_event_id"]
    out: list[ServerEvent] = []
    params = {"after": "0", "run_id": run_id}
    with httpx.stream("GET", f"{url}/api/stream/metrics", params=params, timeout=10) as response:
        for event in parse(response.iter_lines()):
            out.append(event)
            if event.id is not None and event.id >= last:
                break
    return out


def assert_stored_exactly_once(url: str, run_id: str, steps: int) -> None:
    """Steps 0..steps-1 each stored once, and no seq twice anywhere in the run's event stream."""
    series = history(url, run_id)
    assert series["total"] == steps
    assert series["step"] == list(range(steps))
    seqs = [e.data["seq"] for e in replay(url, run_id) if e.name == "metrics"]
    assert len(seqs) == steps
    assert len(set(seqs)) == steps


LOGGER = """
    import sys, time, trainpilot
    url, data_dir, steps, run_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    run = trainpilot.init(project="sdk", server=url, data_dir=data_dir, run_id=run_id)
    print(run.id, flush=True)
    for step in range(steps):
        run.log({"loss": 1.0 / (step + 1), "acc": step / steps})
        if pause:
            time.sleep(pause)
    run.finish(timeout=60)
    print(run.delivered, flush=True)
"""


def start_logger(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOGGER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def end(proc: subprocess.Popen[str]) -> None:
    """Kill the child if a failure left it running, and reap it and its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_metrics_logged_in_another_process_reach_an_sse_subscriber_once_and_in_order(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    run_id = unique("other")
    proc = start_logger(shared_server.url, str(tmp_path / "client"), "200", run_id)
    try:
        # after=0 replays anything logged before this subscriber connected, so nothing can be missed
        events = sse_events(
            shared_server.url,
            {"run_id": run_id, "kinds": "metrics,status", "after": "0"},
            count=203,  # created, running, 200 metrics, finished
            timeout=30,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        end(proc)
    assert proc.returncode == 0, err
    assert out.split()[0] == run_id
    assert [e.data["data"]["status"] for e in events if e.name == "status"] == [
        "created",
        "running",
        "finished",
    ]
    metrics = [e for e in events if e.name == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(200))
    assert [e.data["data"]["loss"] for e in metrics] == [1.0 / (s + 1) for s in range(200)]
    seqs = [e.data["seq"] for e in metrics]
    assert seqs == sorted(set(seqs))
    assert all(e.data["run_id"] == run_id for e in events)


def test_points_logged_while_the_server_is_down_arrive_exactly_once_when_it_starts(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server")  # its port is known, nothing listens on it yet
    run = trainpilot.init(project="sdk", server=live.url, data_dir=str(tmp_path / "client"))
    try:
        for step in range(300):
            run.log({"loss": float(step)})
        wait_until(lambda: run._sender.spool.path.exists(), what="the SDK to spool")
        live.start()
        for step in range(300, 400):
            run.log({"loss": float(step)})
        run.finish(timeout=60)
        assert_stored_exactly_once(live.url, run.id, 400)
        assert run_info(live.url, run.id)["status"] == "finished"
    finally:
        run.finish(timeout=1)
        live.stop()


def test_kill_9_of_the_server_mid_run_loses_and_duplicates_nothing(
    server: LiveServer, tmp_path: Path
) -> None:
    """12,000 points, the server killed mid-run and restarted: each point stored once, and a live
    subscriber that reconnects with its last id receives exactly the events it had not seen."""
    steps = 12_000
    spool = tmp_path / "client" / "spool" / "killed.jsonl"
    seen: list[ServerEvent] = []
    subscriber = SSEClient(f"{server.url}/api/stream/metrics", {"run_id": "killed"}, after=0, retry_s=0.2)

    def follow() -> None:
        for event in subscriber:
            seen.append(event)
            if event.name == "status" and event.data["data"]["status"] == "finished":
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    proc = start_logger(server.url, str(tmp_path / "client"), str(steps), "killed", "0.0003")
    try:
        wait_until(lambda: len(stored_steps(server.url, "killed")) > 1000, what="the first points")
        server.stop(kill=True)
        wait_until(spool.exists, timeout=15, what="the SDK to spool while the server is dead")
        server.start()
        out, err = proc.communicate(timeout=120)
        reader.join(60)
    finally:
        subscriber.stop()
        end(proc)
    assert proc.returncode == 0, err
    assert_stored_exactly_once(server.url, "killed", steps)
    # a batch the dead server stored but never answered is sent again, so this may count it twice
    assert int(out.split()[1]) >= steps + 2  # every metric plus the running and finished status events
    assert run_info(server.url, "killed")["status"] == "finished"
    # The subscriber saw every stored event of the run exactly once, in id order, across the crash.
    stored = [e.id for e in replay(server.url, "killed")]
    assert [e.id for e in seen] == stored
    assert len([e for e in seen if e.name == "metrics"]) == steps


def test_control_pauses_resumes_sets_lr_rejects_and_stops_a_training_loop(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    url = shared_server.url
    run = trainpilot.init(project="sdk", server=url, data_dir=str(tmp_path / "client"), run_id=unique("ctl"))
    lr_seen: list[tuple[float, str]] = []
    run.on_control("set_lr", lambda value: lr_seen.append((value, threading.current_thread().name)))
    steps = [0]

    def loop() -> None:
        while not run.should_stop:
            run.wait_if_paused()
            run.log({"loss": 1.0 / (steps[0] + 1)})
            steps[0] += 1
            time.sleep(0.002)

    trainer = threading.Thread(target=loop, name="training")
    trainer.start()
    api = httpx.Client(base_url=url, timeout=10)

    def command(action: str, value: float | None = None) -> dict[str, Any]:
        reply = api.post("/api/training/control", json={"run_id": run.id, "action": action, "value": value})
        assert reply.status_code == 202, reply.text
        ack = wait_for_ack(url, run.id, reply.json()["command_id"])  # read from the SSE stream
        assert ack["action"] == action
        return ack

    try:
        wait_until(lambda: steps[0] > 5, what="the loop to run")
        assert command("pause")["status"] == "applied"
        paused_at, stored_at = steps[0], run_info(url, run.id)["last_step"]
        time.sleep(0.5)
        assert steps[0] == paused_at
        info = run_info(url, run.id)
        assert info["last_step"] == stored_at and info["status"] == "paused"

        set_lr = command("set_lr", 0.02)
        assert set_lr["status"] == "applied" and set_lr["value"] == 0.02
        assert lr_seen == [(0.02, "training")]  # called on the training thread, even while paused

        checkpoint = command("checkpoint")
        assert checkpoint["status"] == "rejected"
        assert "checkpoint" in checkpoint["reason"] and "handler" in checkpoint["reason"]
        assert steps[0] == paused_at

        assert command("resume")["status"] == "applied"
        wait_until(lambda: steps[0] > paused_at + 5, what="steps after resume")

        assert command("stop")["status"] == "applied"
        trainer.join(10)
        assert not trainer.is_alive()
        run.finish()
        assert run_info(url, run.id)["status"] == "stopped"
    finally:
        run.finish(timeout=5)  # also ends the loop if an assertion above failed
        trainer.join(5)
        api.close()


class Scalar:
    """Like a 0-d tensor or a numpy scalar, without numpy: converts with float()."""

    def __float__(self) -> float:
        return 2.5


class StepLike:
    """Like a tensor or numpy integer used as a step: converts with int()."""

    def __int__(self) -> int:
        return 5


class Exploding:
    def __float__(self) -> float:
        raise RuntimeError("a tensor on a dead device")


def test_log_never_raises_and_keeps_every_usable_value(shared_server: LiveServer, tmp_path: Path) -> None:
    url = shared_server.url
    run = trainpilot.init(project="sdk", server=url, data_dir=str(tmp_path / "client"), run_id=unique("odd"))
    try:
        run.log(
            {
                "ok": 1,
                "flag": True,
                "text": "high",
                "none": None,
                "nested": {"a": 1.0, "b": {"c": 2}},
                "scalar": Scalar(),
                "obj": object(),
                "list": [1, 2],
                "huge": 10**400,
                "exploding": Exploding(),
                "": 4.0,
                "x" * 300: 4.0,
                7: 3.0,  # type: ignore[dict-item]
            }
        )
        run.log(None)  # type: ignore[arg-type]
        run.log("loss")  # type: ignore[arg-type]
        run.log({"loss": 0.5}, step="ten")  # type: ignore[arg-type]
        run.log({"loss": 0.25}, step=StepLike())  # type: ignore[arg-type]
        run.log({"loss": 0.125}, step=-3)
        run.finish(timeout=30)
        current = httpx.get(f"{url}/api/metrics/current", params={"run_id": run.id}).json()["metrics"]
        assert {k: v["value"] for k, v in current.items()} == {
            "ok": 1.0,
            "flag": 1.0,
            "nested/a": 1.0,
            "nested/b/c": 2.0,
            "scalar": 2.5,
            "7": 3.0,
            "loss": 0.125,
        }
        # a bad step becomes the next one; one that converts to an int is used as that int
        loss = history(url, run.id)
        assert (loss["step"], loss["value"]) == ([1, 5, 6], [0.5, 0.25, 0.125])
        assert run_info(url, run.id)["status"] == "finished"
        assert run._sender.dropped == 0
    finally:
        run.finish(timeout=1)


def test_an_event_the_server_refuses_costs_only_itself(shared_server: LiveServer, tmp_path: Path) -> None:
    url = shared_server.url
    run = trainpilot.init(
        project="sdk", server=url, data_dir=str(tmp_path / "client"), run_id=unique("split")
    )
    for step in range(10):
        run.log({"loss": float(step)})
        if step == 4:
            run.log_event("gossip", {"text": "not a kind the server knows"})
            run.log_event("status", {"status": "dancing"})
    run.finish(timeout=30)
    assert history(url, run.id)["step"] == list(range(10))
    assert run_info(url, run.id)["status"] == "finished"
    assert run._sender.dropped == 2


def test_nan_and_inf_are_stored_as_null_and_reported_as_a_nan_inf_insight(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    url = shared_server.url
    run = trainpilot.init(project="sdk", server=url, data_dir=str(tmp_path / "client"), run_id=unique("nan"))
    try:
        run.log({"loss": 1.0, "grad": 1.0})
        run.log({"loss": math.nan, "grad": math.inf})
        run.log({"loss": 2.0, "grad": -math.inf})
        run.finish(timeout=30)
        events = replay(url, run.id)
        stored = [(e.data["step"], e.data["data"]) for e in events if e.name == "metrics"]
        assert stored == [
            (0, {"loss": 1.0, "grad": 1.0}),
            (1, {"loss": None, "grad": None}),
            (2, {"loss": 2.0, "grad": None}),
        ]
        loss = history(url, run.id, "loss")  # charts get the finite points only
        assert (loss["step"], loss["value"]) == ([0, 2], [1.0, 2.0])
        insights = [e.data["data"] for e in events if e.name == "insight"]
        nan_inf = [i for i in insights if i["kind"] == "nan_inf"]
        assert len(nan_inf) == 1  # once per run and metric, not once per bad point
        assert set(nan_inf[0]["evidence"]["metrics"]) == {"loss", "grad"}
        assert nan_inf[0]["step"] == 1
    finally:
        run.finish(timeout=1)


def test_serve_true_runs_the_server_in_process_with_readable_points_and_working_control(
    tmp_path: Path,
) -> None:
    port = free_port()
    run = trainpilot.init(project="embedded", serve=True, port=port, data_dir=str(tmp_path / "data"))
    try:
        assert run.url == f"http://127.0.0.1:{port}"
        for step in range(50):
            run.log({"loss": float(step)})
        wait_until(lambda: stored_steps(run.url, run.id) == list(range(50)), what="points over HTTP")

        def command(action: str) -> int:
            reply = httpx.post(f"{run.url}/api/training/control", json={"run_id": run.id, "action": action})
            assert reply.status_code == 202, reply.text
            command_id: int = reply.json()["command_id"]
            return command_id

        def paused() -> bool:  # the training thread (here: this one) applies commands at step boundaries
            run.wait_if_paused(timeout=0.05)
            return run.paused

        pause = command("pause")
        wait_until(paused, what="the pause to apply")
        assert wait_for_ack(run.url, run.id, pause)["status"] == "applied"
        assert run_info(run.url, run.id)["status"] == "paused"

        stop = command("stop")
        wait_until(lambda: run.should_stop, what="the stop to arrive")
        run.wait_if_paused()  # returns at once: a stopped run is never held paused
        assert wait_for_ack(run.url, run.id, stop)["status"] == "applied"
        run.finish()
        assert run_info(run.url, run.id)["status"] == "stopped"
        assert_stored_exactly_once(run.url, run.id, 50)
    finally:
        run.finish(timeout=1)
        run._sender.transport.server.stop()  # the server init(serve=True) started


REPLAYER = """
    import sys, time, trainpilot
    from pathlib import Path
    url, data_dir, spool = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    run = trainpilot.init(project="later", server=url, data_dir=data_dir)
    deadline = time.monotonic() + 30
    while spool.exists() and time.monotonic() < deadline:  # the replay runs in the background
        time.sleep(0.05)
    run.finish()
    print("replayed" if not spool.exists() else "spool still there")
"""


def test_finish_with_the_server_down_keeps_the_spool_and_the_next_process_replays_it(
    tmp_path: Path,
) -> None:
    live = LiveServer(tmp_path / "server")
    client_dir = tmp_path / "client"
    run = trainpilot.init(project="sdk", server=live.url, data_dir=str(client_dir), run_id="orphan")
    for step in range(120):
        run.log({"loss": float(step)})
    started = time.monotonic()
    run.finish(timeout=1)
    # the timeout bounds the wait for delivery; the sender then gets a few seconds to let go of the spool
    assert time.monotonic() - started < 1 + 6
    spool = client_dir / "spool" / "orphan.jsonl"
    assert spool.exists() and spool.stat().st_size > 0
    assert sum(line.count(b'"kind":"metrics"') for line in spool.read_bytes().splitlines()) == 120

    live.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(REPLAYER), live.url, str(client_dir), str(spool)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "replayed"
        assert_stored_exactly_once(live.url, "orphan", 120)
        assert run_info(live.url, "orphan")["status"] == "finished"
    finally:
        live.stop()


def test_an_exception_in_a_with_block_marks_the_run_failed(shared_server: LiveServer, tmp_path: Path) -> None:
    url, client = shared_server.url, str(tmp_path / "client")
    with pytest.raises(RuntimeError), trainpilot.init(project="sdk", server=url, data_dir=client) as failed:
        failed.log({"loss": 1.0})
        raise RuntimeError("boom")
    assert run_info(url, failed.id)["status"] == "failed"
    with trainpilot.init(project="sdk", server=url, data_dir=client) as clean:
        clean.log({"loss": 1.0})
    assert run_info(url, clean.id)["status"] == "finished"


def test_steps_logged_faster_than_the_send_interval_share_requests(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    url = shared_server.url
    run = trainpilot.init(project="sdk", server=url, data_dir=str(tmp_path / "client"), run_id=unique("fast"))
    batches: list[int] = []
    send = run._sender.transport.send

    def counted(run_id: str, events: list[dict[str, Any]]) -> None:
        send(run_id, events)
        metrics = sum(1 for e in events if e["kind"] == "metrics")
        if metrics:
            batches.append(metrics)

    run._sender.transport.send = counted  # type: ignore[method-assign]
    for step in range(60):  # a 2-ms step: faster than the 20-ms send interval, slower than a request
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        time.sleep(0.002)
    run.finish(timeout=30)
    assert history(url, run.id)["step"] == list(range(60))
    assert sum(batches) == 60  # every step sent once
    # ~130 ms of steps in sends at most 20 ms apart: about 7 requests. Sending as soon as the last
    # answer came back (a loopback round trip is about 1 ms) would make one request per step.
    assert len(batches) <= 15, batches


def compute(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU, as a training step or a costly request does."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_fast_loop_has_sending_held_to_its_cpu_share_and_a_quiet_run_each_event_at_once(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    """A pass that costs c seconds of the sender's CPU is followed by one no sooner than c / CPU_SHARE
    later while a computing loop logs fast, so sending cannot take more of training's core however
    fast it logs; a run logging a few events a second still gets each one sent in a pass of its own,
    and so does a process that logs fast but computes nothing."""
    url = shared_server.url
    run = trainpilot.init(
        project="sdk", server=url, data_dir=str(tmp_path / "client"), run_id=unique("share")
    )
    batches: list[int] = []
    send = run._sender.transport.send

    def costly(run_id: str, events: list[dict[str, Any]]) -> None:
        compute(0.002)  # a slow machine's request
        send(run_id, events)
        if metrics := sum(1 for e in events if e["kind"] == "metrics"):
            batches.append(metrics)

    run._sender.transport.send = costly  # type: ignore[method-assign]
    started = time.monotonic()
    for step in range(300):  # 2-ms steps of computing for about 0.6 s
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        compute(0.002)
    elapsed = time.monotonic() - started
    run.flush(timeout=30)
    fast = list(batches)
    # 2 ms a pass at 0.5 % of a core: passes at least 0.25 s (MAX_GATHER_S) apart, not 20 ms
    assert sum(fast) == 300 and len(fast) <= elapsed / 0.25 + 3, (elapsed, fast)
    time.sleep(0.3)  # the fast phase's last gap (at most MAX_GATHER_S) runs out
    batches.clear()
    for step in range(300, 305):  # a quiet run: an event every 60 ms
        time.sleep(0.06)
        run.log({"loss": 0.1}, step=step)
    run.flush(timeout=30)
    assert batches == [1] * 5
    batches.clear()
    for step in range(305, 365):  # logging fast with nothing computed: no CPU of training's to spare
        run.log({"loss": 0.1}, step=step)
        time.sleep(0.002)
    run.finish(timeout=30)
    assert sum(batches) == 60 and len(batches) >= 4, batches  # 20 ms apart, not 0.25 s
    assert history(url, run.id)["step"] == list(range(365))


LOG_AND_HANG = """
    import sys, time, trainpilot
    url, data_dir, run_id, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    run = trainpilot.init(project="sdk", server=url, data_dir=data_dir, run_id=run_id, control=False)
    for step in range(steps):
        run.log({"loss": float(step)}, step=step)
    time.sleep(600)  # the test kills it with -9 once its points are in the spool
"""


def die_with_a_spool(url: str, data_dir: Path, run_id: str, steps: int) -> None:
    """A real process logs `steps` points to an unreachable `url` and is killed with -9 once they are
    all in its spool: it leaves the spool behind, as a crashed training does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOG_AND_HANG), url, str(data_dir), run_id, str(steps)],
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: spooled_metrics(data_dir) == steps, what="the dying process to spool")
    finally:
        proc.kill()
        proc.communicate()


def test_a_dead_processs_spool_is_replayed_until_empty_however_long_the_server_stays_away(
    tmp_path: Path,
) -> None:
    live = LiveServer(tmp_path / "server")  # not started yet
    client = tmp_path / "client"
    die_with_a_spool(live.url, client, "crashed", 200)
    with open(client / "spool" / "crashed.jsonl", "ab") as spool:
        spool.write(b'{"run": {"id": "crashed"}, "events": [{"seq"')  # a write the kill cut short
    run = trainpilot.init(project="sdk", server=live.url, data_dir=str(client), control=False)
    try:
        time.sleep(3)  # the replayer of the next process finds the server away, several tries in a row
        live.start()
        wait_until(lambda: len(stored_steps(live.url, "crashed")) == 200, what="the orphan's points")
        assert stored_steps(live.url, "crashed") == list(range(200))
        wait_until(lambda: not (client / "spool" / "crashed.jsonl").exists(), what="the emptied spool to go")
    finally:
        run.finish(timeout=5)
        live.stop()


def test_a_resumed_run_delivers_its_killed_processs_spool_first_and_loses_none_of_its_own(
    tmp_path: Path,
) -> None:
    """A run resumed by a new process (same run id) while its dead predecessor's spool is on disk:
    the new sender takes that spool over, spools its own batches behind it while the server is away,
    and delivers both, each point once, the old ones first."""
    live = LiveServer(tmp_path / "server")
    client = tmp_path / "client"
    die_with_a_spool(live.url, client, "resumed", 300)
    run = trainpilot.init(
        project="sdk", server=live.url, data_dir=str(client), run_id="resumed", control=False
    )
    try:
        for step in range(300, 450):
            run.log({"loss": float(step)}, step=step)
        wait_until(lambda: spooled_metrics(client) == 450, what="the resumed run to spool its points too")
        live.start()
        for step in range(450, 600):
            run.log({"loss": float(step)}, step=step)
        run.finish(timeout=60)
        assert_stored_exactly_once(live.url, "resumed", 600)
        # in id order the points come in seq order: the dead process's first, then the resumed one's
        metrics = [e for e in replay(live.url, "resumed") if e.name == "metrics"]
        assert [e.data["step"] for e in metrics] == list(range(600))
        assert [e.data["seq"] for e in metrics] == sorted(e.data["seq"] for e in metrics)
        assert run_info(live.url, "resumed")["status"] == "finished"
        assert run.dropped == 0
        assert list((client / "spool").glob("*.jsonl")) == []
    finally:
        run.finish(timeout=1)
        live.stop()


def test_two_live_processes_of_one_run_each_spool_to_a_file_of_their_own(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server")
    client = tmp_path / "client"
    alive = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOG_AND_HANG), live.url, str(client), "twice", "100"],
        stderr=subprocess.PIPE,
    )
    run = None
    try:
        wait_until(lambda: spooled_metrics(client) == 100, what="the first process to spool")
        run = trainpilot.init(project="sdk", server=live.url, data_dir=str(client), run_id="twice")
        for step in range(100, 200):
            run.log({"loss": float(step)}, step=step)
        wait_until(lambda: spooled_metrics(client) == 200, what="the second process to spool beside it")
        assert run._sender.spool.path.name == "twice~2.jsonl"
        live.start()
        run.finish(timeout=60)
        wait_until(lambda: stored_steps(live.url, "twice") == list(range(200)), what="both spools")
    finally:
        if run is not None:
            run.finish(timeout=1)
        alive.kill()
        alive.communicate()
        live.stop()


def test_run_ids_with_characters_that_mean_something_in_a_url_get_their_own_points(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    for run_id in ("with space", "what?", "hash#tag", "pct%41", "ünï"):
        run = trainpilot.init(project="sdk", server=shared_server.url, data_dir=str(tmp_path), run_id=run_id)
        run.log({"loss": 1.0})
        run.log_image("sample", b"\x89PNG\r\n\x1a\n" + bytes(32))
        run.finish(timeout=10)
        assert stored_steps(shared_server.url, run_id) == [0], run_id
        kinds = [e.name for e in replay(shared_server.url, run_id)]
        assert "media" in kinds and kinds[-1] == "status", (run_id, kinds)
        assert run_info(shared_server.url, run_id)["status"] == "finished"


class Treacherous(Mapping[str, float]):
    """A mapping whose every method raises, as a broken user object might."""

    def __getitem__(self, key: str) -> float:
        raise RuntimeError("no item")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no iteration")

    def __len__(self) -> int:
        raise RuntimeError("no length")


def hostile_calls(run: trainpilot.Run) -> dict[str, list[Callable[[], object]]]:
    """For every public member of `Run`, calls a training loop might make by mistake."""
    rng = np.random.default_rng(0)
    huge = rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)  # ~12 MB of PNG: over the server's limit
    png = b"\x89PNG\r\n\x1a\n" + bytes(32)
    bad_steps: list[Any] = [object(), "ten", -1, 10**30, math.nan, math.inf]
    return {
        "log": [
            lambda: run.log(None),  # type: ignore[arg-type]
            lambda: run.log(Treacherous()),  # type: ignore[arg-type]
            lambda: run.log({f"m{i}": 1.0 for i in range(5000)}),  # more metrics than an event takes
            *[lambda step=step: run.log({"loss": 1.0}, step=step) for step in bad_steps],
        ],
        "log_rank": [
            lambda: run.log_rank(None),  # type: ignore[arg-type]
            lambda: run.log_rank(Treacherous()),  # type: ignore[arg-type]
            *[lambda step=step: run.log_rank({"load": 1.0}, step=step) for step in bad_steps],
        ],
        "log_event": [
            lambda: run.log_event(None, None),  # type: ignore[arg-type]
            lambda: run.log_event("log", [1, 2]),  # type: ignore[arg-type]
            lambda: run.log_event("log", Treacherous()),  # type: ignore[arg-type]
            lambda: run.log_event("log", {"text": object()}),  # not JSON
            lambda: run.log_event("log", {"big": 10**30}),  # beyond 64 bits: not JSON either
            lambda: run.log_event(object(), {"text": "hi"}),  # type: ignore[arg-type]
            lambda: run.log_event("gossip", {"text": "an unknown kind"}),
            lambda: run.log_event("status", {"status": "dancing"}),
            *[lambda step=step: run.log_event("log", {"text": "x"}, step=step) for step in bad_steps],
        ],
        "log_image": [
            lambda: run.log_image(None, None),  # type: ignore[arg-type]
            lambda: run.log_image("obj", object()),
            lambda: run.log_image("5d", np.zeros((2, 2, 2, 2, 2))),
            lambda: run.log_image("nan", np.full((4, 4), np.nan)),
            lambda: run.log_image("huge", huge),
            lambda: run.log_image("x" * 500, png),
            lambda: run.log_image(object(), png, step=object(), caption=object()),  # type: ignore[arg-type]
            *[lambda step=step: run.log_image("png", png, step=step) for step in bad_steps],
        ],
        "log_recorded": [
            lambda: run.log_recorded(None, step=None, ts=None, seq=None),  # type: ignore[arg-type]
            lambda: run.log_recorded({"x": 1.0}, step=-1, ts=object(), seq=-5),  # type: ignore[arg-type]
            lambda: run.log_recorded({"x": 1.0}, step=1, ts=math.nan, seq=2**70),
            lambda: run.log_recorded({"x": 1.0}, step="1", ts="now", seq="one"),  # type: ignore[arg-type]
        ],
        "on_control": [
            lambda: run.on_control("fly", print),
            lambda: run.on_control(None, None),  # type: ignore[arg-type]
            lambda: run.on_control("set_lr", "not callable"),  # type: ignore[arg-type]
        ],
        "wait_if_paused": [lambda t=t: run.wait_if_paused(t) for t in ("soon", -1, math.nan, math.inf)],
        "flush": [lambda t=t: run.flush(t) for t in ("soon", -1, math.nan)],
        "close": [lambda: run.close("soon")],  # type: ignore[arg-type]
        "finish": [lambda: run.finish("dancing", timeout="soon")],  # type: ignore[arg-type]
        "should_stop": [lambda: run.should_stop],
        "paused": [lambda: run.paused],
        "delivered": [lambda: run.delivered],
        "dropped": [lambda: run.dropped],
    }


def test_every_public_method_of_a_run_takes_hostile_input_without_raising_and_warns_once(
    shared_server: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a live server, a dead one, and after finish(): nothing raises into the loop, each problem is
    warned about once, and only the bad calls are lost: the good points between them all arrive."""
    monkeypatch.setattr("trainpilot.sdk.sender._warned", set())
    public = {name for name in dir(trainpilot.Run) if not name.startswith("_")}
    dead = f"http://127.0.0.1:{free_port()}"
    for server in (shared_server.url, dead):
        run = trainpilot.init(
            project="sdk", server=server, data_dir=str(tmp_path / "client"), run_id=unique("bad")
        )
        calls = hostile_calls(run)
        assert set(calls) == public  # a new public method needs hostile calls here
        good = 0
        with caplog.at_level(logging.WARNING, logger="trainpilot"):
            for _ in range(2):  # twice: the second time, no new warning
                for name, tries in calls.items():
                    if name in ("close", "finish"):
                        continue
                    for call in tries:
                        call()
                        run.log({"good": float(good)}, step=100 + good)
                        good += 1
            started = time.monotonic()
            if server == dead:
                run.close(-1)  # no wait: what is not delivered stays in the spool
            else:
                run.finish("dancing", timeout="soon")  # type: ignore[arg-type]
            assert time.monotonic() - started < 30
            for tries in calls.values():  # and after finish(): nothing is sent, nothing raises
                for call in tries:
                    call()
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "sender error" in m or "Traceback" in m], messages
        repeated = [m for m, n in Counter(messages).items() if n > 1]
        assert not repeated, repeated
        caplog.clear()
        if server != dead:
            assert history(server, run.id, "good")["step"] == list(range(100, 100 + good))
            assert run_info(server, run.id)["status"] == "finished"  # "dancing" is no status: the default
