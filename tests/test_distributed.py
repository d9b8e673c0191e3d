"""Training under torchrun: two real gloo ranks make one run, and obey each command at the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch.distributed

import trainpilot
from tests.conftest import LiveServer, wait_for_ack, wait_until
from trainpilot.client.sse import ServerEvent, parse
from trainpilot.sdk.distributed import agreed_spec

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this torch build: distributed tests NOT run",
)
WORKER = Path(__file__).parent / "ddp_worker.py"
SOURCE = str(Path(trainpilot.__file__).parents[1])


def torchrun(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Two ranks on this machine, the way a user starts them."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]),  # this trainpilot
        "OMP_NUM_THREADS": "1",
        "TRAINPILOT_LOCKSTEP_KEEPALIVE_S": "0.2",
    }
    with open(tmp_path / "torchrun.log", "ab") as log:
        return subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Launched torchrun jobs; any still running at the end (a failed test) is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:  # torchrun and its workers: the session it leads
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def finished(proc: subprocess.Popen[bytes], tmp_path: Path) -> int:
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError((tmp_path / "torchrun.log").read_text()[-3000:]) from None
    assert code == 0, (tmp_path / "torchrun.log").read_text()[-3000:]
    return code


def the_run(api: httpx.Client, project: str) -> dict[str, Any]:
    runs = api.get("/api/runs", params={"project": project}).json()["runs"]
    assert len(runs) <= 1, f"the ranks made {len(runs)} runs"
    return dict(runs[0]) if runs else {}


def commander(api: httpx.Client, url: str, run_id: str) -> Callable[..., dict[str, Any]]:
    def command(action: str, value: float | None = None) -> dict[str, Any]:
        reply = api.post("/api/training/control", json={"run_id": run_id, "action": action, "value": value})
        assert reply.status_code == 202, reply.text
        ack = wait_for_ack(url, run_id, reply.json()["command_id"])
        assert ack["status"] == "applied", ack
        return ack

    return command


def events_until_final_status(url: str, run_id: str) -> list[ServerEvent]:
    """The run's control and status events, up to its final status."""
    out: list[ServerEvent] = []
    params = {"after": "0", "run_id": run_id, "kinds": "control,status"}
    with httpx.stream("GET", url + "/api/stream/metrics", params=params, timeout=10) as response:
        for event in parse(response.iter_lines()):
            out.append(event)
            if isinstance(event.data, dict) and event.data["data"].get("status") in ("stopped", "finished"):
                return out
    raise AssertionError("no final status")


def test_reference_trainer_under_torchrun_pauses_and_resumes_both_ranks_at_the_same_step(
    server: LiveServer, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    proc = torchrun(
        tmp_path,
        *("-m", "trainpilot.cli", "train", "--server", server.url, "--project", "ddp-train"),
        *("--epochs", "1000", "--batch-size", "16", "--train-fraction", "0.2", "--eval-every", "100000"),
        *("--device", "cpu", "--no-progress", "--tensorboard-dir", "", "--system-every-s", "0"),
        *("--checkpoint-dir", str(tmp_path / "ck"), "--data-dir", str(tmp_path / "data")),
    )
    launched.append(proc)
    api = server.client()
    wait_until(lambda: bool(the_run(api, "ddp-train")), timeout=60, what="the run to appear")
    run_id = the_run(api, "ddp-train")["id"]
    command = commander(api, server.url, run_id)

    def last_steps() -> tuple[int, int]:
        """The step of each rank's latest rank-tagged metric: how far each rank has trained."""
        metrics = api.get(f"/api/runs/{run_id}").json()["metrics"]
        return tuple(metrics.get(f"rank{r}/system/cpu_percent", {}).get("step", -1) for r in (0, 1))  # type: ignore[return-value]

    wait_until(lambda: min(last_steps()) >= 3, timeout=60, what="both ranks to train")
    pause = command("pause")
    stopped_at = pause["step"] - 1  # the acknowledgement names the next step; the last one done is before
    wait_until(lambda: last_steps() == (stopped_at, stopped_at), what="both ranks' steps up to the pause")
    assert the_run(api, "ddp-train")["status"] == "paused"
    time.sleep(0.6)  # three keepalive rounds of the paused ranks
    assert last_steps() == (stopped_at, stopped_at), "no rank advances while paused"

    command("resume")
    wait_until(lambda: min(last_steps()) > stopped_at + 3, what="both ranks to train on after resume")

    stop = command("stop")
    finished(proc, tmp_path)
    assert last_steps() == (stop["step"] - 1, stop["step"] - 1), "both ranks stop at the same step"
    run = the_run(api, "ddp-train")
    assert run["status"] == "stopped" and run["last_step"] == stop["step"] - 1
    checkpoints = list((tmp_path / "ck" / run_id).iterdir())
    assert [p.name for p in checkpoints] == [f"step-{stop['step'] - 1}.pt"]
    api.close()


def test_every_command_reaches_every_rank_at_the_same_step_and_is_acknowledged_once(
    server: LiveServer, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    proc = torchrun(tmp_path, str(WORKER), server.url, str(tmp_path))
    launched.append(proc)

    def journal(rank: int) -> list[dict[str, Any]]:
        path = tmp_path / f"rank{rank}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def entries(what: str) -> list[list[dict[str, Any]]]:
        return [[e for e in journal(rank) if e["what"] == what] for rank in (0, 1)]

    wait_until(lambda: all(entries("init")), timeout=60, what="both ranks to start")
    run_ids = {e[0]["run_id"] for e in entries("init")}
    assert len(run_ids) == 1, f"the ranks disagree on the run: {run_ids}"
    run_id = run_ids.pop()
    api = server.client()
    command = commander(api, server.url, run_id)
    wait_until(
        lambda: {"rank0/step", "rank1/step"} <= set(api.get(f"/api/runs/{run_id}").json()["metrics"]),
        what="both ranks' own metrics",
    )

    def applied_on_both(action: str, ack: dict[str, Any]) -> None:
        wait_until(lambda: all(entries(action)), what=f"{action} on both ranks")
        steps = [[e["step"] for e in per_rank] for per_rank in entries(action)]
        assert steps == [[ack["step"]], [ack["step"]]], f"{action}: {steps}, acknowledged at {ack['step']}"

    set_lr = command("set_lr", 0.5)
    assert set_lr["result"] == "set_lr on rank 0"
    applied_on_both("set_lr", set_lr)
    assert [e[0]["value"] for e in entries("set_lr")] == [0.5, 0.5]
    applied_on_both("checkpoint", command("checkpoint"))
    pause = command("pause")
    applied_on_both("pause", pause)
    time.sleep(1.0)  # five keepalive rounds: rank 1 waits in the collective, rank 0 for a command
    assert not entries("resume")[0] and not entries("resume")[1]
    applied_on_both("resume", command("resume"))
    assert entries("resume")[0][0]["step"] == pause["step"], "no step runs while paused"
    stop = command("stop")
    applied_on_both("stop", stop)
    finished(proc, tmp_path)
    assert [e[0]["step"] for e in entries("end")] == [stop["step"], stop["step"]]

    events = events_until_final_status(server.url, run_id)
    controls = [e.data["data"] for e in events if e.name == "control"]  # type: ignore[index]
    acks = [c["command_id"] for c in controls if "command_id" in c]
    assert len(acks) == len(set(acks)) == 5, "rank 0 alone acknowledges, once per command"
    statuses = [e.data["data"]["status"] for e in events if e.name == "status"]  # type: ignore[index]
    assert statuses == ["created", "running", "paused", "running", "stopped"]
    params = {"run_id": run_id, "keys": "from_rank,rank1/step", "max_points": 100000}
    history = api.get("/api/metrics/history", params=params).json()["series"]
    assert set(history["from_rank"]["value"]) == {0.0}, "only rank 0's log() reaches the run"
    assert history["rank1/step"]["step"][-1] == stop["step"] - 1
    assert len(the_run(api, "ddp-sdk")) and the_run(api, "ddp-sdk")["status"] == "stopped"
    api.close()


def test_ranks_agree_on_the_given_id_or_torchruns_job_id_and_init_says_when_they_cannot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = {"id": "r-mine", "project": "p", "name": "r-mine", "config": {}}
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    derived = agreed_spec(spec, given_id=False)
    other = agreed_spec({**spec, "id": "r-other", "name": "r-other"}, given_id=False)
    assert derived is not None and other is not None
    assert derived["id"] == other["id"] != "r-mine" and derived["name"] == derived["id"]
    assert agreed_spec(spec, given_id=True) == spec
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default rendezvous id: not one job's
    assert agreed_spec(spec, given_id=False) is None, "only rank 0 can say: init() broadcasts its spec"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="rank 1 of 2: the ranks cannot agree on one run"):
        trainpilot.init(server="http://127.0.0.1:9", data_dir=str(tmp_path))  # and no process group


def test_a_rank_without_torch_logs_only_its_tagged_metrics_and_never_imports_torch(
    server: LiveServer, tmp_path: Path
) -> None:
    script = f"""
import sys, trainpilot
run = trainpilot.init(project="no-torch", server={server.url!r}, run_id="r-rank1", data_dir={str(tmp_path)!r})
run.log({{"loss": 1.0}}, step=4)
run.log_rank({{"cpu": 50.0}})
run.wait_if_paused()
run.finish()
assert (run.rank, run.world_size) == (1, 2)
assert "torch" not in sys.modules, "the SDK imported torch"
"""
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    env.pop("TORCHELASTIC_RUN_ID", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no torch.distributed process group" in done.stderr, "a lone rank says its commands go nowhere"
    run = httpx.get(f"{server.url}/api/runs/r-rank1").json()
    assert list(run["metrics"]) == ["rank1/cpu"], "log() is a no-op on rank 1; log_rank() is tagged"
    assert run["metrics"]["rank1/cpu"]["step"] == 4
    assert run["status"] == "created", "rank 1 sends no status: rank 0 speaks for the run"
