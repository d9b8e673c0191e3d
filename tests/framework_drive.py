"""Drive a framework's live run from outside, as a user does: pause, resume, checkpoint, set_lr and stop
over the REST API while the framework trains in the test's main thread, checking each command's effect
in what the server stored. Shared by the integration tests of every framework."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for_ack, wait_until
from trainpilot.client.sse import parse

NEW_LR = 0.0123


class Drive:
    def __init__(self, url: str, project: str, lr_key: str = "lr") -> None:
        self.url = url
        self.project = project
        self.lr_key = lr_key
        self.api = httpx.Client(base_url=url, timeout=10)
        self.run_id = ""
        self.acks: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Drive:
        return self

    def __exit__(self, *_: Any) -> None:
        self.api.close()

    def wait_for_run(self, timeout: float = 120.0) -> str:
        def made() -> bool:
            runs = self.api.get("/api/runs", params={"project": self.project}).json()["runs"]
            assert len(runs) <= 1, f"one training made {len(runs)} runs"
            self.run_id = runs[0]["id"] if runs else ""
            return bool(runs)

        wait_until(made, timeout, f"a run of project {self.project}")
        return self.run_id

    def current(self) -> dict[str, Any]:
        body: dict[str, Any] = self.api.get("/api/metrics/current", params={"run_id": self.run_id}).json()
        return body

    def last_step(self, key: str | None = None) -> int:
        point = self.current()["metrics"].get(key or self.lr_key)
        return -1 if point is None else int(point["step"])

    def series(self, key: str, after: int = -1) -> tuple[list[int], list[float]]:
        params: dict[str, Any] = {"run_id": self.run_id, "keys": key, "max_points": 100_000}
        if after >= 0:
            params["start_step"] = after + 1
        found = self.api.get("/api/metrics/history", params=params).json()["series"].get(key)
        return (found["step"], found["value"]) if found else ([], [])

    def events(self) -> list[dict[str, Any]]:
        """Every stored event of the run (its kind as ``kind``), read off the stream up to its last one."""
        last = self.api.get(f"/api/runs/{self.run_id}").json()["last_event_id"]
        out: list[dict[str, Any]] = []
        params = {"after": "0", "run_id": self.run_id}  # every kind, so the last event is among them
        with httpx.stream("GET", self.url + "/api/stream/metrics", params=params, timeout=10) as response:
            for event in parse(response.iter_lines()):
                if isinstance(event.data, dict):
                    out.append({**event.data, "kind": event.name})
                if event.id is not None and int(event.id) >= last:
                    break
        return out

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters told after the run was made (``log`` events), merged."""
        merged: dict[str, Any] = {}
        for event in self.events():
            if event["kind"] == "log":
                merged.update(event["data"].get("hparams", {}))
        return merged

    def command(self, action: str, value: float | None = None) -> dict[str, Any]:
        body = {"run_id": self.run_id, "action": action, "value": value}
        reply = self.api.post("/api/training/control", json=body)
        assert reply.status_code == 202, reply.text
        ack = wait_for_ack(self.url, self.run_id, reply.json()["command_id"], timeout=60)
        assert ack["status"] == "applied", ack
        self.acks[action] = ack
        return ack

    def exercise(self, first_step: int = 3, lr_points: int = 3) -> None:
        """Every command once, each checked: pause holds the step, resume lets it go on, checkpoint
        answers (the test checks the file), set_lr shows in the next `lr_points` logged lrs over the
        schedule, stop."""
        self.wait_for_run()
        wait_until(lambda: self.last_step() >= first_step, 120, f"{self.lr_key} at step {first_step}")

        self.command("pause")
        time.sleep(0.5)  # what the last batch logged before it paused lands
        held = self.last_step()
        time.sleep(1.5)
        assert self.last_step() == held, "training went on while paused"
        assert self.current()["status"] == "paused"
        self.command("resume")
        wait_until(lambda: self.last_step() > held, 60, "a step after resume")

        self.command("checkpoint")

        at = self.command("set_lr", NEW_LR)["step"]
        wait_until(
            lambda: len(self.series(self.lr_key, at)[0]) >= lr_points,
            60,
            f"{lr_points} {self.lr_key} after set_lr",
        )
        steps, values = self.series(self.lr_key, at)
        # pinned over the schedule; as the framework stores it (Keras: float32)
        assert values == [pytest.approx(NEW_LR, rel=1e-6)] * len(values), (steps, values)

        self.command("stop")


def drive_in_background(
    url: str, project: str, lr_key: str = "lr", lr_points: int = 3
) -> tuple[threading.Thread, Drive, list[BaseException]]:
    """`Drive.exercise` on a thread; the list gets its exception. Stops the run if it failed half-way,
    so the training in the main thread always ends."""
    drive = Drive(url, project, lr_key)
    errors: list[BaseException] = []

    def go() -> None:
        try:
            drive.exercise(lr_points=lr_points)
        except BaseException as exc:
            errors.append(exc)
            if drive.run_id:
                drive.api.post("/api/training/control", json={"run_id": drive.run_id, "action": "stop"})

    thread = threading.Thread(target=go, name="drive", daemon=True)
    thread.start()
    return thread, drive, errors


def finished(drive: Drive, thread: threading.Thread, errors: list[BaseException]) -> dict[str, Any]:
    """After training returned: the drive's own outcome, then the run as stored."""
    thread.join(60)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "the drive did not finish"
    run: dict[str, Any] = drive.api.get(f"/api/runs/{drive.run_id}").json()
    return run
