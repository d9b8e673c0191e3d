"""PyTorch Lightning with trainpilot: real training of a small digits classifier, streamed and steered
through the Logger and the Callback, in one process and under the DDP strategy (2 CPU processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from tests.conftest import LiveServer
from tests.framework_drive import drive_in_background, finished
from tests.lightning_app import Digits, digits, trainer
from trainpilot.integrations.lightning import TrainpilotCallback, TrainpilotLogger

HERE = Path(__file__).parent


def test_lightning_run_streams_and_obeys_pause_resume_checkpoint_set_lr_and_stop(
    server: LiveServer, tmp_path: Path
) -> None:
    thread, drive, errors = drive_in_background(server.url, "lightning-one")
    with drive:
        logger = TrainpilotLogger(project="lightning-one", server=server.url, data_dir=str(tmp_path / "tp"))
        fit = trainer(str(tmp_path), [TrainpilotCallback()], logger, max_epochs=500, max_time="00:00:02:00")
        fit.fit(Digits(lr=0.05, hidden=32), *digits())

        run = finished(drive, thread, errors)
        assert run["status"] == "stopped"
        assert run["id"] == logger.version
        hparams = drive.hparams()
        assert hparams["lr"] == 0.05 and hparams["hidden"] == 32  # the module's
        assert hparams["trainer"]["max_epochs"] == 500
        assert fit.global_step <= drive.acks["stop"]["step"] + 1  # stopped at that batch
        assert Path(drive.acks["checkpoint"]["result"]).is_file()
        keys = set(drive.current()["metrics"])
        assert {"train/loss", "val/loss", "val/acc", "lr", "system/cpu_percent"} <= keys, keys


def test_the_logger_alone_streams_the_run_and_its_hyperparameters(server: LiveServer, tmp_path: Path) -> None:
    logger = TrainpilotLogger(project="lightning-logger", server=server.url, data_dir=str(tmp_path / "tp"))
    fit = trainer(str(tmp_path), [], logger, max_steps=20)
    fit.fit(Digits(), *digits())

    from tests.framework_drive import Drive

    with Drive(server.url, "lightning-logger") as drive:
        drive.wait_for_run()
        run = drive.api.get(f"/api/runs/{drive.run_id}").json()
        assert run["status"] == "finished" and drive.hparams()["lr"] == 0.1
        steps, _ = drive.series("train/loss")
    assert steps == list(range(20)), steps


@pytest.mark.timeout(300)
def test_lightning_ddp_on_two_cpu_processes_shares_one_run_and_applies_commands_on_both(
    server: LiveServer, tmp_path: Path
) -> None:
    thread, drive, errors = drive_in_background(server.url, "lightning-ddp")
    with drive:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
        }
        with open(tmp_path / "ddp.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "lightning_app.py"), server.url, "lightning-ddp", str(tmp_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                code = proc.wait(240)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError((tmp_path / "ddp.log").read_text()[-3000:]) from None
        assert code == 0, (tmp_path / "ddp.log").read_text()[-3000:]

        run = finished(drive, thread, errors)
        assert run["status"] == "stopped"
        assert drive.hparams()["trainer"]["world_size"] == 2
        assert Path(drive.acks["checkpoint"]["result"]).is_file()
        keys = set(drive.current()["metrics"])
        assert {"train/loss", "lr", "rank1/system/cpu_percent"} <= keys, keys
