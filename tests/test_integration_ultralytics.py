"""Ultralytics YOLO with trainpilot: a YOLOv8n built from its YAML (no weights) really trains on a
generated data set of coloured rectangles (16 train, 8 val images at 64 px, on the CPU), streamed and
steered from outside through the REST API: pause holds the step, checkpoint writes a loadable file,
set_lr pins the lr over warmup and the scheduler, stop ends training at that batch.

Ultralytics reaches for the network unless told not to (a font for its plots, analytics, pip installs):
`YOLO_OFFLINE` and a config dir of the test's own, holding the font, keep it off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Read by Ultralytics at import: its settings file and font go here, not in ~/.config; offline, it
# downloads nothing, installs nothing and sends no analytics.
os.environ.setdefault(
    "YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), f"trainpilot-tests-yolo-{os.getuid()}")
)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

ultralytics = pytest.importorskip("ultralytics")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import trainpilot  # noqa: E402
from tests.conftest import LiveServer, wait_until  # noqa: E402
from tests.framework_drive import NEW_LR, Drive, drive_in_background, finished  # noqa: E402
from trainpilot.integrations.ultralytics import add_callbacks  # noqa: E402

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
LOSSES = {"train/box_loss", "train/cls_loss", "train/dfl_loss"}
LRS = {"lr/pg0", "lr/pg1", "lr/pg2"}


def shapes(root: Path, train: int = 16, val: int = 8, size: int = 64) -> Path:
    """A detection data set in YOLO format: 1-2 red, green or blue rectangles per image, on noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 3))):
                cls = int(rng.integers(0, 3))
                w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                image[y : y + h, x : x + w] = COLOURS[cls]
                lines.append(f"{cls} {(x + w / 2) / size} {(y + h / 2) / size} {w / size} {h / size}")
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(("red", "green", "blue")))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """Ultralytics with nothing to fetch: the font its plots want is there (matplotlib's DejaVu Sans),
    and no other logger it knows (MLflow, ClearML...) is switched on."""
    import matplotlib
    from ultralytics import settings
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    shutil.copy(font, USER_CONFIG_DIR / "Arial.ttf")
    others = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
    settings.update({"sync": False, **dict.fromkeys(others, False)})
    yield


def train(model: Any, data: Path, root: Path, **kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "data": str(data),
        "imgsz": 64,
        "batch": 4,
        "device": "cpu",
        "workers": 0,
        "amp": False,
        "plots": True,
        "verbose": False,
        "project": str(root / "runs"),
        "name": "shapes",
        "exist_ok": True,
        **kwargs,
    }
    return model.train(**args)


def test_yolo_training_streams_and_obeys_pause_resume_checkpoint_set_lr_and_stop(
    offline: None, server: LiveServer, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    data = shapes(tmp_path / "shapes")
    # set_lr held for two epochs' batches (4 an epoch): warmup and two scheduler steps had their chance
    thread, drive, errors = drive_in_background(server.url, "yolo", lr_key="lr/pg0", lr_points=9)
    model = YOLO("yolov8n.yaml")
    callbacks = add_callbacks(model, project="yolo", server=server.url, data_dir=str(tmp_path / "tp"))
    with drive:
        # warmup over the first 200 batches: set_lr lands inside it, where the lr moves every batch
        train(model, data, tmp_path, epochs=300, warmup_epochs=50)
        check(drive, thread, errors, callbacks, tmp_path)


def check(
    drive: Drive, thread: threading.Thread, errors: list[BaseException], callbacks: Any, tmp_path: Path
) -> None:
    """What the steered training left on the server and on disk."""
    from ultralytics import YOLO

    url = drive.url
    run = finished(drive, thread, errors)
    assert run["status"] == "stopped"
    assert run["name"] == "shapes"  # Ultralytics' run name
    assert run["config"]["imgsz"] == 64 and run["config"]["epochs"] == 300
    assert run["config"]["ultralytics"]["version"] == ultralytics.__version__
    assert callbacks.steering is None  # the run is finished and the optimizer hook removed

    # stop: the batch it was applied at was the last; the trainer then validated and saved as after an epoch
    stop = drive.acks["stop"]["step"]
    steps, _ = drive.series("lr/pg0")
    assert steps == list(range(len(steps))) and stop - 1 <= steps[-1] <= stop, (steps[-3:], stop)
    weights = tmp_path / "runs" / "shapes" / "weights"
    assert (weights / "last.pt").is_file() and (weights / "best.pt").is_file()

    # checkpoint: the trainer's own checkpoint format, which YOLO loads
    checkpoint = Path(drive.acks["checkpoint"]["result"])
    assert checkpoint.parent == weights and checkpoint.is_file()
    assert YOLO(str(checkpoint)).names == {0: "red", 1: "green", 2: "blue"}

    # set_lr: every param group at the new rate from the ack on, over warmup and the epoch's scheduler step
    at = drive.acks["set_lr"]["step"]
    for key in sorted(LRS):
        _, values_before = drive.series(key)
        after, values = drive.series(key, at)
        assert len(after) >= 9 and values == [NEW_LR] * len(values), (key, after, values)
        assert len(set(values_before[: at - 1])) > 1, key  # warmup moved it before the pin

    # pause: no step logged while paused (the drive checked the stored step did not move for 1.5 s)
    events = drive.events()
    statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
    assert statuses == ["created", "running", "paused", "running", "stopped"], statuses

    # what was streamed: batch losses and lrs at every step, epoch metrics, the final eval, system, plots
    metrics: dict[str, list[int]] = {}
    for event in events:
        if event["kind"] == "metrics":
            for key in event["data"]:
                metrics.setdefault(key, []).append(event["step"])
    for key in LOSSES | LRS:
        assert metrics[key] == steps, key
    epochs = metrics["metrics/mAP50(B)"]
    assert len(epochs) >= 2 and epochs == metrics["val/box_loss"] == metrics["epoch"]
    assert epochs[-1] == steps[-1] and all(step % 4 == 3 for step in epochs[:-1]), epochs  # 4 batches/epoch
    assert metrics["best/metrics/mAP50(B)"] == [steps[-1]]
    assert "system/cpu_percent" in metrics
    images = {e["data"]["name"]: e["data"]["url"] for e in events if e["kind"] == "media"}
    assert {"plots/val_batch0_pred", "plots/val_batch0_labels", "plots/labels"} <= set(images), images
    served = httpx.get(url + images["plots/val_batch0_pred"], timeout=5)
    assert served.status_code == 200
    written = tmp_path / "runs" / "shapes" / "val_batch0_pred.jpg"
    assert served.content == written.read_bytes()  # the JPEG Ultralytics wrote, as it is


def test_a_run_of_ones_own_is_logged_to_across_trainings_and_left_open(
    offline: None, server: LiveServer, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    data = shapes(tmp_path / "shapes")
    run = trainpilot.init(project="yolo-own", server=server.url, data_dir=str(tmp_path / "tp"))
    model = YOLO("yolov8n.yaml")
    add_callbacks(model, run=run)
    train(model, data, tmp_path, epochs=2, plots=False, val=False)  # validates after the last epoch only
    train(model, data, tmp_path, epochs=2, plots=False)  # a second training goes on in the same run
    with Drive(server.url, "yolo-own", lr_key="lr/pg0") as drive:
        drive.wait_for_run()
        wait_until(lambda: drive.last_step() == 15, 30, "the 16 batches of two trainings of 2 epochs")
        assert drive.series("lr/pg0")[0] == list(range(16))
        assert drive.series("epoch") == ([3, 7, 11, 15], [1, 2, 1, 2])
        assert drive.series("metrics/mAP50(B)")[0] == [7, 11, 15]  # no stale metrics for a skipped val
        assert drive.series("best/metrics/mAP50(B)")[0] == [7, 15]
        assert drive.current()["status"] == "running"  # not finished by the integration: it is the user's
        run.finish()
        wait_until(lambda: drive.current()["status"] == "finished", 30, "the user's finish")
        assert "metrics/mAP50(B)" in drive.current()["metrics"]


def test_a_training_that_raises_ends_its_run_failed(
    offline: None, server: LiveServer, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    data = shapes(tmp_path / "shapes")
    model = YOLO("yolov8n.yaml")
    add_callbacks(model, project="yolo-failed", server=server.url, data_dir=str(tmp_path / "tp"))

    def broken(trainer: Any) -> None:
        raise RuntimeError("a bug in the user's own callback")

    model.add_callback("on_train_epoch_end", broken)
    with pytest.raises(RuntimeError, match="user's own callback"):
        train(model, data, tmp_path, epochs=2, plots=False)
    with Drive(server.url, "yolo-failed", lr_key="lr/pg0") as drive:
        drive.wait_for_run()
        wait_until(lambda: drive.current()["status"] == "failed", 30, "the run marked failed")
        assert drive.last_step() == 3  # the first epoch's 4 batches were logged
