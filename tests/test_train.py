"""The reference trainer, for real: a few steps of PyTorch on digits and shapes, controlled live."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import trainpilot
from tests.conftest import sse_events, wait_for_ack, wait_until
from trainpilot.sdk.run import Run
from trainpilot.server.runner import free_port
from trainpilot.trainer.config import TrainConfig
from trainpilot.trainer.train import Trainer


@pytest.fixture
def embedded_run(tmp_path: Path) -> Iterator[Run]:
    run = trainpilot.init(
        project="train-tests", serve=True, port=free_port(), data_dir=str(tmp_path / "data")
    )
    yield run
    run.finish()
    run._sender.transport.server.stop()  # the server init(serve=True) started


def small(tmp_path: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "epochs": 1,
        "batch_size": 256,
        "checkpoint_dir": str(tmp_path / "ck"),
        "tensorboard_dir": str(tmp_path / "tb"),
        "progress": False,
        "system_every_s": 0.0,
    }
    base.update(overrides)
    return TrainConfig(**base)


def history(run: Run, keys: str) -> dict[str, Any]:
    response = httpx.get(f"{run.url}/api/metrics/history", params={"run_id": run.id, "keys": keys})
    series: dict[str, Any] = response.json()["series"]
    return series


def test_digits_trains_for_real_and_logs_what_it_promises(tmp_path: Path, embedded_run: Run) -> None:
    trainer = Trainer(small(tmp_path, epochs=3, batch_size=64), embedded_run).start()
    trainer.join()
    assert trainer.step == 3 * trainer.steps_per_epoch
    assert trainer.final_val["val/acc"] > 0.5  # ten classes: chance is 0.1
    run_info = httpx.get(f"{embedded_run.url}/api/runs/{embedded_run.id}").json()
    assert run_info["status"] == "finished"
    metrics = run_info["metrics"]
    for key in (
        "train/loss",
        "train/acc",
        "lr",
        "grad_norm",
        "grad_norm/first_layer",
        "grad_norm/last_layer",
        "step_time_s",
        "data_time_s",
        "images_per_s",
        "val/loss",
        "val/acc",
        "val/acc/7",
        "system/cpu_percent",
    ):
        assert key in metrics, key
    losses = history(embedded_run, "train/loss")["train/loss"]["value"]
    assert len(losses) == trainer.step and all(v > 0 for v in losses)
    media = sse_events(embedded_run.url, {"after": "0", "kinds": "media", "run_id": embedded_run.id}, count=6)
    by_type = {e.data["data"]["type"]: e.data["data"] for e in media}  # type: ignore[index]
    confusion = by_type["confusion_matrix"]
    assert len(confusion["matrix"]) == 10
    assert sum(map(sum, confusion["matrix"])) == len(trainer.data.val_x)
    samples = by_type["image"]
    assert samples["name"] == "samples" and samples["caption"].startswith("predicted/true:")
    image = httpx.get(embedded_run.url + samples["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    tb_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert tb_files, "the trainer writes TensorBoard event files too"


def test_shapes_with_a_resnet_runs_and_its_checkpoint_resumes_at_the_same_step(
    tmp_path: Path, embedded_run: Run
) -> None:
    cfg = small(tmp_path, data="shapes", model="resnet", image_size=16, count=200, classes=4, batch_size=32)
    trainer = Trainer(cfg, embedded_run)
    trainer.fit()
    path = trainer.save("test")
    state = torch.load(path, weights_only=False)
    assert state["step"] == trainer.step == trainer.steps_per_epoch
    resumed = Trainer(
        small(
            tmp_path,
            data="shapes",
            model="resnet",
            image_size=16,
            count=200,
            classes=4,
            batch_size=32,
            epochs=2,
            resume=str(path),
        ),
        embedded_run,
    )
    assert resumed.step == trainer.step and resumed.epoch == 1
    for a, b in zip(resumed.model.state_dict().values(), trainer.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_each_control_command_changes_the_real_training_thread(tmp_path: Path, embedded_run: Run) -> None:
    run = embedded_run
    trainer = Trainer(small(tmp_path, epochs=50, batch_size=64, loader_delay=0.01), run).start()
    api = httpx.Client(base_url=run.url, timeout=10)

    def command(action: str, value: float | None = None) -> dict[str, Any]:
        reply = api.post("/api/training/control", json={"run_id": run.id, "action": action, "value": value})
        assert reply.status_code == 202, reply.text
        return wait_for_ack(run.url, run.id, reply.json()["command_id"])

    wait_until(lambda: trainer.step >= 3, what="training to start")
    assert command("pause")["status"] == "applied"
    paused_at = trainer.step
    time.sleep(0.5)
    assert trainer.step == paused_at, "no step advances while paused"

    assert command("set_lr", 0.0123)["status"] == "applied"
    assert trainer.lr() == pytest.approx(0.0123)

    ack = command("checkpoint")
    assert ack["status"] == "applied"
    checkpoint = Path(ack["result"])
    assert torch.load(checkpoint, weights_only=False)["step"] == paused_at

    assert command("resume")["status"] == "applied"
    wait_until(lambda: trainer.step > paused_at + 2, what="steps after resume")
    assert trainer.lr() == pytest.approx(0.0123), "the schedule does not override a live set_lr"

    assert command("stop")["status"] == "applied"
    trainer.join()
    assert trainer.checkpoints[-1].name == f"step-{trainer.step}.pt"
    assert api.get("/api/runs/" + run.id).json()["status"] == "stopped"
    api.close()


def test_an_image_folder_and_a_toml_config_drive_the_trainer(tmp_path: Path, embedded_run: Run) -> None:
    import argparse

    from PIL import Image

    from trainpilot.trainer.config import add_flags, config_from

    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(12):
            shade = tuple(max(0, c - 8 * i) for c in colour)
            Image.new("RGB", (20, 20), shade).save(tmp_path / "pics" / label / f"{i}.png")
    (tmp_path / "pics" / "red" / "notes.txt").write_text("not an image: skipped")
    (tmp_path / "run.toml").write_text(
        f'data = "folder:{tmp_path / "pics"}"\nimage-size = 16\nepochs = 2\nlr = 0.1\n'
    )
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(
        [
            "--config",
            str(tmp_path / "run.toml"),
            "--lr",
            "0.05",
            "--batch-size",
            "8",
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--tensorboard-dir",
            str(tmp_path / "tb"),
            "--no-progress",
        ]
    )
    cfg = config_from(args)
    assert (cfg.image_size, cfg.epochs, cfg.lr, cfg.batch_size, cfg.progress) == (16, 2, 0.05, 8, False)
    trainer = Trainer(cfg, embedded_run)
    assert trainer.data.classes == ["blue", "red"] and trainer.data.shape == (3, 16, 16)
    trainer.fit()
    assert trainer.final_val["val/acc"] >= 0.5
    (tmp_path / "bad.toml").write_text("epochz = 3\n")
    with pytest.raises(ValueError, match="epochz"):
        config_from(parser.parse_args(["--config", str(tmp_path / "bad.toml")]))
