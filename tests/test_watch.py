"""`trainpilot watch`: TensorBoard directories as users have them, streamed once and only once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from tests.conftest import LiveServer, sse_events, wait_until
from trainpilot.tensorboard.tailer import Watcher, run_id_for

WRITER = """
    import sys, time
    kind, logdir, steps, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if kind == "torch":
        from torch.utils.tensorboard import SummaryWriter
    else:
        from tensorboardX import SummaryWriter
    w = SummaryWriter(logdir, flush_secs=1)
    for step in range(steps):
        w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_scalars("lr", {"group0": 0.1, "group1": 0.01}, step)
        w.flush()
        time.sleep(pause)
    w.close()
"""


def history(server: LiveServer, run_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/api/metrics/history", params={"run_id": run_id, "max_points": 100_000}
    )
    if response.status_code != 200:
        return {}
    series: dict[str, Any] = response.json()["series"]
    return series


def watcher_for(logdir: Path, server: LiveServer, tmp_path: Path) -> Watcher:
    return Watcher(logdir, server=server.url, project="tb", data_dir=str(tmp_path / "client"))


def test_files_written_live_by_torch_and_tensorboardx_are_followed(
    server: LiveServer, tmp_path: Path
) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    first = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), "torch", str(logdir / "a"), "40", "0.05"]
    )
    watcher = watcher_for(logdir, server, tmp_path)
    deadline = time.monotonic() + 60
    second = None
    while time.monotonic() < deadline:
        watcher.poll()
        if second is None and watcher.sent > 20:  # a second run appears while the first is being written
            second = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(WRITER), "tbx", str(logdir / "b"), "30", "0.02"]
            )
        if second is not None and first.poll() is not None and second.poll() is not None:
            watcher.poll()
            break
        time.sleep(0.1)
    assert second is not None and first.returncode == 0 and second.returncode == 0
    watcher.poll()
    watcher.close()
    run_a, run_b = run_id_for(logdir.resolve(), "a"), run_id_for(logdir.resolve(), "b")
    series_a = history(server, run_a)
    assert series_a["loss"]["step"] == list(range(40))
    assert series_a["loss"]["value"][1] == 0.5
    series_b = history(server, run_b)
    assert series_b["loss"]["step"] == list(range(30))
    # add_scalars writes each member to its own sub-folder (torch: lr_group0, tensorboardX: lr/group1):
    # they are runs of their own, as in TensorBoard.
    runs = {r["name"] for r in httpx.get(f"{server.url}/api/runs", params={"project": "tb"}).json()["runs"]}
    assert {"a", "b", "a/lr_group0", "b/lr/group1"} <= runs


def test_a_restarted_watcher_adds_no_duplicates(server: LiveServer, tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITER), "tbx", str(logdir / "r"), "25", "0"], check=True
    )
    first = watcher_for(logdir, server, tmp_path)
    first.poll()
    first.close()
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITER), "tbx", str(logdir / "r"), "10", "0"], check=True
    )
    again = watcher_for(logdir, server, tmp_path)  # same data dir: resumes where it stopped
    again.poll()
    again.close()
    (tmp_path / "client" / "watch").rename(tmp_path / "lost-state")
    blank = watcher_for(
        logdir, server, tmp_path
    )  # no state at all: re-reads everything, stores nothing twice
    blank.poll()
    blank.close()
    steps = history(server, run_id_for(logdir.resolve(), "r"))["loss"]["step"]
    assert sorted(steps) == sorted(list(range(25)) + list(range(10)))  # two writer sessions, each once


def write_tf2_style(logdir: Path, tag: str, values: list[float]) -> None:
    """What Keras/TF2 writes: scalars as tensor summaries; plugin metadata on the first record only."""
    writer = EventFileWriter(str(logdir))
    for step, value in enumerate(values):
        summary_value = summary_pb2.Summary.Value(
            tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(value))
        )
        if step == 0:
            summary_value.metadata.CopyFrom(
                scalar_metadata.create_summary_metadata(display_name=tag, description="")
            )
        writer.add_event(
            event_pb2.Event(
                wall_time=1_700_000_000.0 + step,
                step=step,
                summary=summary_pb2.Summary(value=[summary_value]),
            )
        )
    writer.close()


def test_keras_train_and_validation_folders_make_one_run_of_tensor_scalars(
    server: LiveServer, tmp_path: Path
) -> None:
    logdir = tmp_path / "logs"
    write_tf2_style(logdir / "fit" / "train", "epoch_loss", [2.0, 1.0, 0.5])
    write_tf2_style(logdir / "fit" / "validation", "epoch_loss", [2.1, 1.2, 0.9])
    watcher = watcher_for(logdir, server, tmp_path)
    watcher.poll()
    watcher.close()
    series = history(server, run_id_for(logdir.resolve(), "fit"))
    assert series["train/epoch_loss"]["value"] == [2.0, 1.0, 0.5]
    assert series["validation/epoch_loss"]["value"] == pytest.approx([2.1, 1.2, 0.9])  # float32 on disk
    assert series["train/epoch_loss"]["ts"][0] == 1_700_000_000.0


def test_a_restarted_watcher_still_knows_the_plugin_named_before_its_saved_position(
    server: LiveServer, tmp_path: Path
) -> None:
    """TF2 names a tag's plugin in its first record only: records after a restart are still scalars."""
    logdir = tmp_path / "logs"
    write_tf2_style(logdir / "fit", "loss", [3.0, 2.0])
    first = watcher_for(logdir, server, tmp_path)
    first.poll()
    first.close()
    (path,) = (logdir / "fit").iterdir()
    more = tmp_path / "more"
    write_tf2_style(more, "loss", [9.0, 9.0, 1.0, 0.5])
    (source,) = more.iterdir()
    whole = source.read_bytes()
    with open(path, "ab") as f:  # the file grows by the records of steps 2 and 3, without metadata
        f.write(whole[len(path.read_bytes()) :])
    again = watcher_for(logdir, server, tmp_path)
    again.poll()
    again.close()
    assert history(server, run_id_for(logdir.resolve(), "fit"))["loss"]["value"] == [3.0, 2.0, 1.0, 0.5]


def test_empty_and_truncated_files_are_read_as_far_as_they_go(server: LiveServer, tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    write_tf2_style(logdir / "whole", "loss", [3.0, 2.0, 1.0, 0.5])
    (logdir / "empty").mkdir()
    (logdir / "empty" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    (source,) = (logdir / "whole").iterdir()
    data = source.read_bytes()
    cut = logdir / "cut"
    cut.mkdir()
    partial = cut / source.name
    partial.write_bytes(data[: len(data) - 7])  # the last record is still being written
    watcher = watcher_for(logdir, server, tmp_path)
    watcher.poll()
    run_cut = run_id_for(logdir.resolve(), "cut")
    wait_until(
        lambda: len(history(server, run_cut).get("loss", {}).get("step", [])) == 3, what="3 whole records"
    )
    with open(partial, "ab") as f:
        f.write(data[len(data) - 7 :])  # the writer finishes the record
    watcher.poll()
    watcher.close()
    assert history(server, run_cut)["loss"]["step"] == [0, 1, 2, 3]
    assert history(server, run_id_for(logdir.resolve(), "whole"))["loss"]["step"] == [0, 1, 2, 3]


def test_symlinks_out_of_the_log_directory_are_not_followed(server: LiveServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_tf2_style(outside, "secret", [1.0])
    logdir = tmp_path / "logs"
    write_tf2_style(logdir / "inside", "loss", [1.0])
    (logdir / "escape").symlink_to(outside, target_is_directory=True)
    (source,) = outside.iterdir()
    (logdir / "inside" / "events.out.tfevents.9.link.1.0").symlink_to(source)
    watcher = watcher_for(logdir, server, tmp_path)
    watcher.poll()
    watcher.close()
    assert all(path.resolve().is_relative_to(logdir.resolve()) for path in watcher.files)
    assert len(watcher.files) == 1


def test_images_in_event_files_become_media(server: LiveServer, tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    script = """
        import sys, torch
        from torch.utils.tensorboard import SummaryWriter
        with SummaryWriter(sys.argv[1]) as w:
            w.add_scalar("loss", 1.0, 0)
            w.add_image("samples", torch.rand(3, 16, 24), 0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(logdir / "img")], check=True)
    watcher = watcher_for(logdir, server, tmp_path)
    watcher.poll()
    watcher.close()
    run_id = run_id_for(logdir.resolve(), "img")
    (event,) = sse_events(server.url, {"after": "0", "run_id": run_id, "kinds": "media"}, count=1)
    media = event.data["data"]  # type: ignore[index]
    assert media["name"] == "samples"
    image = httpx.get(server.url + media["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_a_watcher_killed_with_sigkill_at_any_moment_loses_nothing_and_stores_nothing_twice(
    server: LiveServer, tmp_path: Path
) -> None:
    """`trainpilot watch` killed with -9 over and over while the training writes, restarted each
    time: it saves how far it read only once what it read is delivered or in its spool, so the
    server ends with every scalar exactly once. Its sends are made to wait a second
    (TRAINPILOT_SEND_INTERVAL_MS), so a kill finds events read but not yet handed over."""
    logdir, steps = tmp_path / "logs", 700  # ~21 s of writing: time for three kills on a loaded machine
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), "tbx", str(logdir / "r"), str(steps), "0.03"]
    )
    command = [sys.executable, "-m", "trainpilot.cli", "watch", str(logdir), "--server", server.url]
    command += ["--project", "tb", "--data-dir", str(tmp_path / "client"), "--poll", "0.1"]
    env = {**os.environ, "TRAINPILOT_SEND_INTERVAL_MS": "1000"}
    run_id = run_id_for(logdir.resolve(), "r")

    def stored() -> int:
        return len(history(server, run_id).get("loss", {}).get("step", []))

    kills = 0
    try:
        while writer.poll() is None:
            watcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = stored()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: stored() > before, timeout=10, what="progress")  # noqa: B023
            time.sleep(0.3 + 0.2 * kills)
            watcher.kill()
            watcher.wait(10)
            kills += 1
        assert writer.returncode == 0 and kills >= 3
        subprocess.run([*command, "--once"], env=env, check=True, capture_output=True, timeout=60)
    finally:
        writer.kill()
        writer.wait(10)
    series = history(server, run_id)
    assert series["loss"]["step"] == list(range(steps))
    group = history(server, run_id_for(logdir.resolve(), "r/lr/group1"))
    assert group["lr"]["step"] == list(range(steps))
