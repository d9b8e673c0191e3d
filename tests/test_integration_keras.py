"""Keras 3 (torch backend) with trainpilot: real training of a small digits classifier by `fit()`,
streamed and steered through `TrainpilotCallback`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported: no TensorFlow here
pytest.importorskip("keras")

import keras

import trainpilot
from tests.conftest import LiveServer
from tests.framework_drive import NEW_LR, Drive, drive_in_background, finished
from tests.keras_app import decaying, digits, model
from trainpilot.integrations.keras import PinnedRate, TrainpilotCallback


def test_fit_streams_and_obeys_pause_resume_checkpoint_set_lr_and_stop_over_a_schedule(
    server: LiveServer, tmp_path: Path
) -> None:
    (x, y), validation = digits()
    net = model(decaying())
    thread, drive, errors = drive_in_background(server.url, "keras-one", lr_key="learning_rate")
    with drive:
        callback = TrainpilotCallback(
            project="keras-one",
            server=server.url,
            data_dir=str(tmp_path / "tp"),
            checkpoint_dir=str(tmp_path / "ckpt"),
        )
        net.fit(x, y, batch_size=16, epochs=1000, validation_data=validation, callbacks=[callback], verbose=0)

        run = finished(drive, thread, errors)
        assert run["status"] == "stopped"
        config = run["config"]
        assert config["model"] == "digits" and config["epochs"] == 1000 and config["steps"] == 94
        assert config["optimizer"]["class"] == "SGD" and config["parameters"] == 64 * 32 + 32 + 330
        assert int(net.optimizer.iterations.numpy()) <= drive.acks["stop"]["step"] + 1  # stopped there
        assert float(net.optimizer.learning_rate.numpy()) == pytest.approx(NEW_LR)  # used, not only logged
        saved = Path(drive.acks["checkpoint"]["result"])
        assert saved.parent == tmp_path / "ckpt" and saved.suffix == ".keras"
        loaded = keras.saving.load_model(saved)  # a whole model, PinnedRate or not
        assert loaded.count_params() == net.count_params()
        keys = set(drive.current()["metrics"])
        assert {"loss", "accuracy", "learning_rate", "system/cpu_percent"} <= keys, keys
        steps, _ = drive.series("loss")
        assert len(steps) == len(set(steps)), "a metric logged twice at one step"


def test_a_run_passed_in_gets_every_batch_and_epoch_and_is_left_running(
    server: LiveServer, tmp_path: Path
) -> None:
    (x, y), validation = digits()
    run = trainpilot.init(project="keras-given", server=server.url, data_dir=str(tmp_path / "tp"))
    try:
        net = model()
        net.fit(
            x[:320],
            y[:320],
            batch_size=32,
            epochs=2,
            validation_data=validation,
            verbose=0,
            callbacks=[TrainpilotCallback(run=run)],
        )
        assert run.flush(10)
        with Drive(server.url, "keras-given", lr_key="loss") as drive:
            drive.wait_for_run()
            assert drive.api.get(f"/api/runs/{run.id}").json()["status"] == "running"
            assert drive.series("loss")[0] == list(range(1, 21))  # 10 batches an epoch, 2 epochs
            assert drive.series("val_loss")[0] == [10, 20]
            assert drive.series("learning_rate")[1] == [pytest.approx(0.05)] * 20
            assert drive.hparams()["epochs"] == 2  # told as a log event: the run was made without them
    finally:
        run.finish()


def test_a_set_lr_wins_over_a_plain_rate_and_a_pinned_rate_saves_and_loads(tmp_path: Path) -> None:
    net = model(decaying())
    callback = TrainpilotCallback()
    callback.set_model(net)
    callback._set_lr(0.02)
    assert isinstance(net.optimizer._learning_rate, PinnedRate)
    assert float(net.optimizer.learning_rate.numpy()) == pytest.approx(0.02)
    (x, y), _ = digits()
    net.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    net.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert float(again.optimizer.learning_rate.numpy()) == pytest.approx(0.02)

    plain = model(0.05)
    callback.set_model(plain)
    callback._set_lr(0.03)
    assert float(plain.optimizer.learning_rate.numpy()) == pytest.approx(0.03)
