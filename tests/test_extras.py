"""A feature whose optional dependency is missing says, in one line, which extra to install; reading
TensorBoard logs needs none. The CLI runs in a fresh interpreter whose import system refuses the
"missing" modules (a `sys.meta_path` finder), as if they were not installed; in-process checks set the
module to None in `sys.modules`, which fails its import the same way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tests.conftest import LiveServer
from trainpilot.exceptions import ConfigError, MissingExtra
from trainpilot.extras import extra

WITHOUT = """
import sys
missing = set(sys.argv[1].split(","))

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Uninstalled())
from trainpilot.cli import main
sys.exit(main(sys.argv[2:]))
"""
OPTIONAL = "torch,torchvision,numpy,PIL,sklearn,tensorboard,tensorboardX,tqdm,psycopg,psycopg_pool,redis"


def cli_without(missing: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT, missing, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def says_only(done: subprocess.CompletedProcess[str], line: str) -> None:
    assert (done.returncode, done.stderr) == (1, f"trainpilot: {line}\n")


def test_train_without_torch_names_the_train_extra(tmp_path: Path) -> None:
    done = cli_without("torch", "train", "--epochs", "1", "--data-dir", str(tmp_path))
    says_only(done, "trainpilot train needs PyTorch: pip install 'trainpilot[train]'")


def test_the_postgres_store_without_psycopg_names_the_postgres_extra(tmp_path: Path) -> None:
    store = "postgresql://tp@127.0.0.1:1/tp"
    line = "the postgres store needs psycopg: pip install 'trainpilot[postgres]'"
    says_only(cli_without("psycopg", "migrate", "--store", store), line)
    says_only(cli_without("psycopg", "serve", "--store", store, "--data-dir", str(tmp_path)), line)


def test_the_redis_broker_without_redis_names_the_redis_extra_before_serving(tmp_path: Path) -> None:
    done = cli_without("redis", "serve", "--broker", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path))
    says_only(done, "the redis broker needs redis-py: pip install 'trainpilot[redis]'")


def write_logs(folder: Path) -> None:
    writer = EventFileWriter(str(folder))
    for step in range(30):
        value = summary_pb2.Summary.Value(tag="train/loss", simple_value=2.0 / (step + 1))
        summary = summary_pb2.Summary(value=[value])
        writer.add_event(event_pb2.Event(wall_time=1.7e9 + step, step=step, summary=summary))
    writer.close()


def test_analyze_and_watch_read_tensorboard_logs_with_no_optional_package(
    server: LiveServer, tmp_path: Path
) -> None:
    write_logs(tmp_path / "runs" / "exp1")
    done = cli_without(OPTIONAL, "analyze", str(tmp_path / "runs"), "--json")
    assert done.returncode == 0, done.stderr
    watch = ["watch", str(tmp_path / "runs"), "--once", "--server", server.url]
    done = cli_without(OPTIONAL, *watch, "--data-dir", str(tmp_path / "client"))
    assert done.returncode == 0, done.stderr
    assert "1 runs, 1 files, 30 scalar events sent" in done.stdout


def test_the_drop_in_writer_without_torch_names_the_train_extra() -> None:
    code = WITHOUT.split("from trainpilot.cli")[0] + "from trainpilot.tensorboard import SummaryWriter"
    done = subprocess.run([sys.executable, "-c", code, "torch"], capture_output=True, text=True, timeout=60)
    line = "trainpilot.tensorboard.SummaryWriter needs PyTorch: pip install 'trainpilot[train]'"
    assert done.stderr.strip().endswith(f"MissingExtra: {line}")


def test_torchvision_models_name_the_vision_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpilot.trainer.models import build

    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(MissingExtra, match=r"^model tv:resnet18 needs torchvision: .*\[vision\]'$"):
        build("tv:resnet18", in_channels=3, num_classes=6)


def test_logging_an_array_without_pillow_names_the_images_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpilot.sdk.sender import encode_image

    assert encode_image(b"\x89PNG") == b"\x89PNG"  # encoded images need nothing
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingExtra, match=r"needs Pillow: pip install 'trainpilot\[images\]'$"):
        encode_image(np.zeros((4, 4)))


def test_a_broken_install_says_why_and_a_missing_module_of_ours_is_a_bug() -> None:
    def failing(error: ImportError) -> Any:
        with extra("postgres", "the postgres store"):
            raise error

    with pytest.raises(MissingExtra) as caught:
        failing(ImportError("no pq wrapper available.\nAttempts made: ..."))
    assert str(caught.value) == (
        "the postgres store needs a working install (no pq wrapper available.): "
        "pip install 'trainpilot[postgres]'"
    )
    assert isinstance(caught.value, ConfigError) and caught.value.extra == "postgres"
    with pytest.raises(ModuleNotFoundError):
        failing(ModuleNotFoundError("No module named 'trainpilot.gone'", name="trainpilot.gone"))
