"""Hugging Face Transformers with trainpilot: real training of a small digits classifier by the `Trainer`,
streamed and steered through `TrainpilotCallback`, in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import trainpilot
from tests.conftest import LiveServer
from tests.framework_drive import NEW_LR, Drive, drive_in_background, finished
from tests.huggingface_app import trainer
from trainpilot.integrations.huggingface import TrainpilotCallback


def test_trainer_run_streams_and_obeys_pause_resume_checkpoint_set_lr_and_stop(
    server: LiveServer, tmp_path: Path
) -> None:
    thread, drive, errors = drive_in_background(server.url, "hf-one", lr_key="learning_rate")
    with drive:
        callback = TrainpilotCallback(project="hf-one", server=server.url, data_dir=str(tmp_path / "tp"))
        fit = trainer(str(tmp_path / "out"), [callback], eval_steps=5)
        fit.train()

        run = finished(drive, thread, errors)
        assert run["status"] == "stopped"
        config = run["config"]
        assert config["learning_rate"] == 0.05 and config["per_device_train_batch_size"] == 16
        assert config["lr_scheduler_type"] == "linear"
        assert fit.state.global_step <= drive.acks["stop"]["step"] + 1  # stopped at that step
        assert {group["lr"] for group in fit.optimizer.param_groups} == {NEW_LR}  # used, not only logged
        folder = Path(drive.acks["checkpoint"]["result"])
        assert folder.parent == tmp_path / "out" and folder.name.startswith("checkpoint-")
        assert {"model.safetensors", "pytorch_model.bin"} & {p.name for p in folder.iterdir()}, folder
        saved = json.loads((folder / "trainer_state.json").read_text())["global_step"]
        assert folder.name == f"checkpoint-{saved}"  # written at the step it is named after
        keys = set(drive.current()["metrics"])
        expected = {"loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "system/cpu_percent"}
        assert expected <= keys, keys
        steps, _ = drive.series("epoch")
        assert len(steps) == len(set(steps)), "a metric logged twice at one step"


def test_a_run_passed_in_is_logged_to_and_left_running(server: LiveServer, tmp_path: Path) -> None:
    run = trainpilot.init(project="hf-given", server=server.url, data_dir=str(tmp_path / "tp"))
    try:
        fit = trainer(str(tmp_path / "out"), [TrainpilotCallback(run=run)], max_steps=10, eval_steps=5)
        fit.train()
        assert run.flush(10)
        with Drive(server.url, "hf-given", lr_key="loss") as drive:
            drive.wait_for_run()
            assert drive.api.get(f"/api/runs/{run.id}").json()["status"] == "running"
            assert drive.series("loss")[0] == list(range(1, 11))
            assert drive.hparams()["max_steps"] == 10  # told as a log event: the run was made without them
    finally:
        run.finish()
