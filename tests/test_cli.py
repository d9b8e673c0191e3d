"""The `trainpilot` command, run as a user runs it: a subprocess against a real server."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, create_run, metrics_batch, sse_events, wait_until
from trainpilot.client import run_path

CLI = [sys.executable, "-m", "trainpilot.cli"]


def cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_runs_prints_a_table_of_runs(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-table", project="cli")
        client.post("/api/runs/cli-table/events", json=metrics_batch(0, 4))
    result = cli("runs", "--server", shared_server.url, "--project", "cli")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:5] == ["ID", "PROJECT", "NAME", "STATUS", "STEP"]
    assert row.split()[:5] == ["cli-table", "cli", "cli-table", "created", "3"]


def test_control_prints_the_command_id_and_the_command_is_stored(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-ctl")
    result = cli("control", "cli-ctl", "pause", "--server", shared_server.url, "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pause sent to cli-ctl: command ")
    command_id = int(result.stdout.split("command ")[1].split()[0])
    (stored,) = sse_events(
        shared_server.url, {"after": "0", "run_id": "cli-ctl", "kinds": "control"}, count=1
    )
    assert stored.id == command_id
    assert stored.data["data"]["action"] == "pause" and stored.data["data"]["status"] == "requested"


def test_control_waits_and_says_when_no_acknowledgement_comes(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-wait")
    result = cli("control", "cli-wait", "stop", "--server", shared_server.url, "--wait", "1")
    assert result.returncode == 3
    assert "no acknowledgement" in result.stderr


def test_set_lr_without_a_value_is_a_clear_error(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-lr")
    result = cli("control", "cli-lr", "set_lr", "--server", shared_server.url)
    assert_one_line_error(result)
    assert "set_lr needs a value" in result.stderr


def test_control_of_an_unknown_run_is_a_one_line_error(shared_server: LiveServer) -> None:
    result = cli("control", "ghost", "pause", "--server", shared_server.url)
    assert_one_line_error(result)
    assert "404" in result.stderr and "ghost" in result.stderr


def test_an_unreachable_server_is_a_one_line_error() -> None:
    result = cli("runs", "--server", "http://127.0.0.1:9")
    assert_one_line_error(result)
    assert "cannot reach" in result.stderr


def test_analyze_reads_a_run_from_a_server_and_an_unknown_one_is_a_one_line_error(
    shared_server: LiveServer,
) -> None:
    losses = [2.3 * 0.97**i for i in range(60)] + [2.3 * 5 * 1.1**i for i in range(30)]
    batch = {"events": [{"seq": i, "step": i, "data": {"train/loss": v}} for i, v in enumerate(losses)]}
    with shared_server.client() as client:
        create_run(client, "cli-analyze")
        client.post("/api/runs/cli-analyze/events", json=batch)
    result = cli("analyze", "cli-analyze", "--server", shared_server.url, "--json")
    assert result.returncode == 0, result.stderr
    assert "divergence" in {f["kind"] for f in json.loads(result.stdout)}
    missing = cli("analyze", "ghost", "--server", shared_server.url)
    assert_one_line_error(missing)
    assert "404" in missing.stderr


@pytest.mark.parametrize("run_id", ["cli-tail", "cli tail #2?"])  # the second must be quoted in the URL
def test_tail_prints_a_runs_metric_lines_live(shared_server: LiveServer, run_id: str) -> None:
    with shared_server.client() as client:
        create_run(client, run_id)
        client.post(run_path(run_id, "/events"), json=metrics_batch(0, 3))
        proc = subprocess.Popen(
            [*CLI, "tail", run_id, "--after", "0", "--server", shared_server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:  # a reader thread, so waiting for a line has a deadline
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read)
        reader.start()
        metric_lines: list[str] = []
        try:
            deadline = time.monotonic() + 30
            while len(metric_lines) < 5 and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if "metrics" in line:
                    metric_lines.append(line)
                if len(metric_lines) == 3:  # the replay is printed; now two live points
                    client.post(run_path(run_id, "/events"), json=metrics_batch(3, 2))
        finally:
            proc.terminate()
            proc.wait(10)
            reader.join(10)
            stdout.close()
    assert [int(ln.split("step")[1].split()[0]) for ln in metric_lines] == [0, 1, 2, 3, 4]
    assert "train/loss=1" in metric_lines[0] and "train/acc=0" in metric_lines[0]


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRAINPILOT_TOKEN"}
    result = cli("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), env=env)
    assert_one_line_error(result)
    assert "TRAINPILOT_TOKEN" in result.stderr


def test_train_resume_continues_the_same_run_at_the_checkpoint_step(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    common = [
        "--server",
        shared_server.url,
        "--data-dir",
        str(tmp_path / "client"),
        "--batch-size",
        "256",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--tensorboard-dir",
        str(tmp_path / "tb"),
        "--project",
        "cli-resume",
    ]
    first = cli("train", *common, "--epochs", "1", timeout=120)
    assert first.returncode == 0, first.stderr
    assert "steps;" in first.stdout and "val/acc=" in first.stdout
    (folder,) = (tmp_path / "ck").iterdir()
    (checkpoint,) = folder.glob("step-*.pt")  # the final checkpoint
    steps_per_epoch = int(checkpoint.stem.removeprefix("step-"))
    second = cli("train", *common, "--epochs", "2", "--resume", str(checkpoint), timeout=120)
    assert second.returncode == 0, second.stderr
    with shared_server.client() as client:
        runs = client.get("/api/runs", params={"project": "cli-resume"}).json()["runs"]
        loss = client.get("/api/metrics/history", params={"run_id": folder.name, "keys": "train/loss"}).json()
    assert [r["id"] for r in runs] == [folder.name] and runs[0]["status"] == "finished"
    assert runs[0]["config"]["batch_size"] == 256
    assert loss["series"]["train/loss"]["step"] == list(range(1, 2 * steps_per_epoch + 1))


def test_migrate_prepares_a_postgres_store_once_and_serve_refuses_one_it_has_not(
    postgres_schema: str, tmp_path: Path
) -> None:
    refused = cli("serve", "--store", postgres_schema, "--port", "0", "--data-dir", str(tmp_path))
    assert_one_line_error(refused)
    assert "trainpilot migrate" in refused.stderr
    first = cli("migrate", "--store", postgres_schema)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    again = cli("migrate", env={**os.environ, "TRAINPILOT_STORE": postgres_schema})
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and "applied" not in again.stdout


def test_migrate_of_an_unreachable_database_is_a_one_line_error_without_the_password() -> None:
    result = cli("migrate", "--store", "postgresql://tp:s3cret@127.0.0.1:1/tp")
    assert_one_line_error(result)
    assert "cannot reach PostgreSQL" in result.stderr and "s3cret" not in result.stderr


def test_serve_on_port_0_names_the_port_it_took(tmp_path: Path) -> None:
    command = [*CLI, "serve", "--port", "0", "--data-dir", str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as server:
        try:
            assert server.stdout is not None
            banner = server.stdout.readline()
            url = banner.split()[2].rstrip("/")
            assert not url.endswith(":0"), banner
            wait_until(lambda: _healthy(url), timeout=30, what="the server on the port its banner names")
        finally:
            server.terminate()
            server.wait(15)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/api/system/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
