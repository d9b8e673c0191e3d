"""The drop-in SummaryWriter: the same event files as torch's own writer, and the points streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter as TorchWriter

import trainpilot
from tests.conftest import LiveServer, sse_events
from trainpilot.tensorboard import SummaryWriter
from trainpilot.tensorboard.reader import EventFile, scalars


def write(writer: Any) -> None:
    for step in range(20):
        writer.add_scalar("train/loss", torch.tensor(1.0 / (step + 1)), step)
        writer.add_scalars("lr", {"a": 0.1, "b": 0.01}, step)
    writer.add_image("grid", torch.rand(3, 8, 8), 19)
    writer.add_histogram("weights", np.random.default_rng(0).normal(size=1000), 19)
    writer.add_text("note", "hello", 19)


def read_scalars(logdir: Path) -> list[tuple[int, dict[str, float]]]:
    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        file = EventFile(path)
        for event in file.read():
            values = scalars(event, file.plugins)
            if values:
                out.append((event.step, values))
    return out


def test_drop_in_writes_what_torch_writes_and_streams_it(server: LiveServer, tmp_path: Path) -> None:
    with TorchWriter(str(tmp_path / "torch")) as plain:
        write(plain)
    run = trainpilot.init(project="tb", server=server.url, data_dir=str(tmp_path / "client"))
    with SummaryWriter(str(tmp_path / "ours"), run=run) as ours:
        write(ours)
    run.finish()
    assert read_scalars(tmp_path / "ours") == read_scalars(tmp_path / "torch")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir() if p.is_dir()) == ["lr_a", "lr_b"]

    metrics = sse_events(server.url, {"after": "0", "run_id": run.id, "kinds": "metrics"}, count=40)
    loss = [(e.data["step"], e.data["data"]["train/loss"]) for e in metrics if "train/loss" in e.data["data"]]
    assert [s for s, _ in loss] == list(range(20)) and loss[1][1] == 0.5
    assert {"lr/a", "lr/b"} <= {k for e in metrics for k in e.data["data"]}
    media = sse_events(server.url, {"after": "0", "run_id": run.id, "kinds": "media,log"}, count=3)
    kinds = {e.data["data"].get("type") or e.data["data"].get("tag") for e in media}
    assert kinds == {"image", "histogram", "note"}


def test_drop_in_opens_and_finishes_its_own_run(server: LiveServer, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TRAINPILOT_SERVER", server.url)
    monkeypatch.setenv("TRAINPILOT_DATA_DIR", str(tmp_path / "client"))
    monkeypatch.setenv("TRAINPILOT_PROJECT", "dropin")
    writer = SummaryWriter(str(tmp_path / "logs"))
    writer.add_scalar("loss", 0.25, 0)
    writer.close()
    runs = httpx.get(f"{server.url}/api/runs", params={"project": "dropin"}).json()["runs"]
    assert runs[0]["name"] == "logs" and runs[0]["status"] == "finished"
    assert (
        httpx.get(f"{server.url}/api/metrics/current", params={"run_id": runs[0]["id"]}).json()["metrics"][
            "loss"
        ]["value"]
        == 0.25
    )
