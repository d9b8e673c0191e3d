"""The `trainpilot` command, run as a user runs it: a subprocess against a real server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import LiveServer, create_run, metrics_batch


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainpilot.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_runs_prints_a_table_of_runs(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-table", project="cli")
        client.post("/api/runs/cli-table/events", json=metrics_batch(0, 4))
    result = cli("runs", "--server", shared_server.url, "--project", "cli")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:5] == ["ID", "PROJECT", "NAME", "STATUS", "STEP"]
    assert row.split()[:5] == ["cli-table", "cli", "cli-table", "created", "3"]


def test_control_sends_a_command_and_reports_its_id(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-ctl")
        result = cli("control", "cli-ctl", "pause", "--server", shared_server.url, "--wait", "0")
        assert result.returncode == 0, result.stderr
        command_id = int(result.stdout.split("command ")[1].split()[0])
        events = client.get("/api/runs/cli-ctl").json()
        assert events["last_event_id"] == command_id


def test_control_waits_and_says_when_no_acknowledgement_comes(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-wait")
    result = cli("control", "cli-wait", "stop", "--server", shared_server.url, "--wait", "1")
    assert result.returncode == 3
    assert "no acknowledgement" in result.stderr


def test_control_mistakes_are_one_line_errors(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-bad")
    missing = cli("control", "cli-bad", "set_lr", "--server", shared_server.url)
    assert missing.returncode == 1 and "set_lr needs a value" in missing.stderr
    unknown = cli("control", "ghost", "pause", "--server", shared_server.url)
    assert unknown.returncode == 1 and "404" in unknown.stderr and "Traceback" not in unknown.stderr
    down = cli("runs", "--server", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach" in down.stderr and "Traceback" not in down.stderr


def test_tail_prints_metric_lines_live(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "cli-tail")
        client.post("/api/runs/cli-tail/events", json=metrics_batch(0, 3))
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainpilot.cli",
                "tail",
                "cli-tail",
                "--after",
                "0",
                "--server",
                shared_server.url,
            ],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + 30
            while len([ln for ln in lines if "metrics" in ln]) < 5 and time.monotonic() < deadline:
                lines.append(proc.stdout.readline())
                if len(lines) == 3:
                    client.post("/api/runs/cli-tail/events", json=metrics_batch(3, 2))
            proc.terminate()
    metric_lines = [ln for ln in lines if "metrics" in ln]
    assert [int(ln.split("step")[1].split()[0]) for ln in metric_lines] == [0, 1, 2, 3, 4]
    assert "train/loss=1" in metric_lines[0]


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = cli("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "TRAINPILOT_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_train_runs_the_reference_trainer_against_a_server(shared_server: LiveServer, tmp_path: Path) -> None:
    result = cli(
        "train",
        "--server",
        shared_server.url,
        "--data-dir",
        str(tmp_path / "client"),
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--tensorboard-dir",
        str(tmp_path / "tb"),
        "--project",
        "cli-train",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "steps;" in result.stdout and "val/acc=" in result.stdout
    with shared_server.client() as client:
        runs = client.get("/api/runs", params={"project": "cli-train"}).json()["runs"]
    assert runs[0]["status"] == "finished" and runs[0]["config"]["batch_size"] == 256
