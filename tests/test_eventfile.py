"""The dependency-free event file reader reads exactly what TensorBoard's own reader reads.

The reference is the `tensorboard` package as trainpilot used it before: `EventFileLoader` (with its
data_compat and dataclass_compat migrations) and `tensor_util.make_ndarray`. Both read event files of
every writer installed here (torch, tensorboardX, TensorBoard's own writer with TF2-style tensor
summaries as Keras writes them), and cut or damaged copies; tags, steps, wall
times and values are compared bit for bit, images byte for byte, records counted.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard import data_compat
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader, RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from trainpilot.tensorboard.eventfile import masked_crc32c
from trainpilot.tensorboard.reader import EventFile, images, read_logdir, scalars

Entry = tuple[int, str, dict[str, str], list[tuple[str, bytes]]]

WRITERS = """
    import sys, numpy as np, torch
    kind, logdir = sys.argv[1], sys.argv[2]
    if kind == "torch":
        from torch.utils.tensorboard import SummaryWriter
    else:
        from tensorboardX import SummaryWriter
    rng = np.random.default_rng(0)
    new, precise = ({"new_style": True}, {"double_precision": True}) if kind == "torch" else ({}, {})
    w = SummaryWriter(logdir)
    w.add_graph(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    for step in range(30):
        w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_scalar("tiny", 1e-45 * step, step)
        w.add_scalar("new_style", np.float32(step / 7), step, **new)
        w.add_scalar("precise", step / 3, step, **new, **precise)
        w.add_scalars("lr", {"group0": 0.1 * 0.9**step, "group1": float("nan") if step == 3 else 0.01}, step)
        w.add_scalar("huge", float("inf") if step % 2 else -1e38, -step)
    w.add_image("img", rng.random((3, 6, 5)), 29)
    w.add_images("imgs", rng.random((2, 3, 4, 4)), 29)
    w.add_histogram("weights", rng.normal(size=500), 29)
    w.add_text("note", "hello", 29)
    w.add_pr_curve("pr", rng.integers(0, 2, 50), rng.random(50), 29)
    w.add_hparams({"lr": 0.1, "bs": 32}, {"hparam/acc": 0.9})
    w.close()
"""


FIELDS = {"float32": "float_val", "float64": "double_val", "float16": "half_val", "int64": "int64_val"}
FIELDS |= {"int32": "int_val", "int8": "int_val", "uint8": "int_val", "bool": "bool_val"}


def tensor_value(tag: str, array: Any, plugin: str | None, content: bool = True) -> summary_pb2.Summary.Value:
    tensor = tensor_util.make_tensor_proto(array)
    array = np.asarray(array)
    if not content and tensor.tensor_content:  # the same value in its typed repeated field
        tensor.tensor_content = b""
        number = array.view(np.uint16) if array.dtype == np.float16 else array
        getattr(tensor, FIELDS[array.dtype.name]).extend(number.ravel().tolist())
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if plugin == "scalars":
        value.metadata.CopyFrom(scalar_metadata.create_summary_metadata(display_name=tag, description=""))
    elif plugin == "images":
        value.metadata.CopyFrom(image_metadata.create_summary_metadata(display_name=tag, description=""))
    return value


def write_tf2_style(folder: Path) -> None:
    """What Keras' TensorBoard callback writes: tensors, the plugin named in a tag's first record."""
    folder.mkdir(parents=True)
    writer = EventFileWriter(str(folder))
    dtypes = [np.float32, np.float64, np.float16, np.int32, np.int64, np.int8, np.uint8, np.bool_]
    for step in range(12):
        first = "scalars" if step == 0 else None
        values = [
            tensor_value(
                f"{np.dtype(t).name}_{mode}", np.asarray(step * 1.37 - 3).astype(t), first, mode == "c"
            )
            for t in dtypes
            for mode in ("c", "f")
        ]
        values.append(tensor_value("vector", np.arange(3, dtype=np.float32), "scalars" if not step else None))
        values.append(tensor_value("one_of_shape", np.ones((1, 1), np.float32) * step, "scalars"))
        png = b"\x89PNG-" + bytes([step])
        values.append(tensor_value("images", np.array([b"5", b"4", png, b"x"], dtype=object), "images"))
        values.append(tensor_value("unnamed", np.float32(step), None))
        summary = summary_pb2.Summary(value=values)
        writer.add_event(event_pb2.Event(wall_time=1.7e9 + step / 3, step=step, summary=summary))
        legacy = summary_pb2.Summary.Value(tag="legacy_image")
        legacy.image.encoded_image_string = png
        writer.add_event(
            event_pb2.Event(wall_time=1.7e9, step=step, summary=summary_pb2.Summary(value=[legacy]))
        )
    writer.add_event(event_pb2.Event(wall_time=1.8e9, step=99, file_version="brain.Event:2"))
    writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("writers")
    write_tf2_style(root / "keras" / "train")
    write_tf2_style(root / "keras" / "validation")
    script = textwrap.dedent(WRITERS)
    for kind in ("torch", "tensorboardX"):
        subprocess.run([sys.executable, "-c", script, kind, str(root / kind)], check=True, timeout=120)
    return root


def bits(values: dict[str, float]) -> dict[str, str]:
    return {tag: struct.pack("<d", value).hex() for tag, value in values.items()}


def reference_scalars(event: Any, plugins: dict[str, str]) -> dict[str, float]:
    """trainpilot's scalars() before it read event files itself."""
    out: dict[str, float] = {}
    if not event.HasField("summary"):
        return out
    for value in event.summary.value:
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
            plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
        if value.HasField("simple_value"):
            out[value.tag] = float(value.simple_value)
            continue
        if plugins.get(value.tag) != "scalars" or not value.HasField("tensor"):
            continue
        array = tensor_util.make_ndarray(data_compat.migrate_value(value).tensor)
        if array.size == 1:
            out[value.tag] = float(array.reshape(()))
    return out


def reference_images(event: Any, plugins: dict[str, str]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    if not event.HasField("summary"):
        return out
    for value in event.summary.value:
        if value.HasField("image"):
            out.append((value.tag, bytes(value.image.encoded_image_string)))
        elif plugins.get(value.tag) == "images" and value.HasField("tensor"):
            out.extend((value.tag, bytes(blob)) for blob in value.tensor.string_val[2:3])
    return out


def reference(path: Path) -> tuple[list[Entry], int]:
    """Records with a scalar or an image, and how many records there are, by TensorBoard's reader."""
    plugins: dict[str, str] = {}
    entries = []
    for event in EventFileLoader(str(path)).Load():
        values, found = reference_scalars(event, plugins), reference_images(event, plugins)
        if values or found:
            entries.append((int(event.step), struct.pack("<d", event.wall_time).hex(), bits(values), found))
    return entries, sum(1 for _ in RawEventFileLoader(str(path)).Load())


def ours(path: Path) -> tuple[list[Entry], int]:
    file = EventFile(path)
    entries = []
    for event in file.read():
        values, found = scalars(event, file.plugins), images(event, file.plugins)
        if values or found:
            entries.append((event.step, struct.pack("<d", event.wall_time).hex(), bits(values), found))
    return entries, file.records


def compare(files: list[Path]) -> tuple[int, int, int]:
    """Both readers on each file: (records, values, images) compared."""
    records = values = found = 0
    for path in files:
        expected, count = reference(path)
        assert ours(path) == (expected, count), path
        records += count
        values += sum(len(entry[2]) for entry in expected)
        found += sum(len(entry[3]) for entry in expected)
    return records, values, found


def test_every_writer_s_files_read_the_same_as_tensorboard_reads_them(logdir: Path) -> None:
    files = sorted(logdir.rglob("*tfevents*"))
    records, values, found = compare(files)
    print(f"writers: {len(files)} files, {records} records, {values} values, {found} images")
    assert len(files) >= 10 and records >= 500 and values >= 800 and found >= 50


def test_read_logdir_folds_train_and_validation_into_their_run(logdir: Path) -> None:
    runs = read_logdir(logdir)
    assert {"keras", "torch", "torch/lr_group0", "tensorboardX", "tensorboardX/lr/group1"} <= set(runs)
    assert not any(key.startswith("keras/") for key in runs)
    keys = {key for event in runs["keras"] for key in event["data"]}
    assert {"train/float32_c", "validation/float16_f", "train/bool_c"} <= keys
    assert "train/vector" not in keys and "train/unnamed" not in keys
    assert all(event["step"] >= 0 for event in runs["torch"])  # negative steps count as 0


def test_a_file_cut_anywhere_reads_its_whole_records_then_the_rest_once_written(logdir: Path) -> None:
    (path,) = (logdir / "keras" / "train").iterdir()
    data = path.read_bytes()
    cut = path.parent.parent / "cut.tfevents"
    growing = EventFile(cut)
    cut.write_bytes(b"")
    read: list[Any] = []
    for end in range(0, len(data), max(1, len(data) // 97)):
        cut.write_bytes(data[:end])
        read += growing.read()
        assert ours(cut)[1] == reference(cut)[1]  # both stop before the record still being written
    cut.write_bytes(data)
    read += growing.read()
    assert growing.records == len(read) == reference(path)[1]


@pytest.mark.parametrize("where", ["length", "length crc", "data", "data crc"])
def test_a_damaged_record_ends_the_read_where_tensorboard_s_ends(logdir: Path, where: str) -> None:
    (path,) = (logdir / "torch").glob("*tfevents*")
    data = bytearray(path.read_bytes())
    first = struct.unpack_from("<Q", data)[0] + 16
    second = struct.unpack_from("<Q", data, first)[0]
    offset = {"length": 0, "length crc": 8, "data": 12 + second // 2, "data crc": 12 + second}[where]
    data[first + offset] ^= 0x40
    damaged = path.parent.parent / f"damaged-{where}.tfevents"
    damaged.write_bytes(bytes(data))
    assert ours(damaged) == reference(damaged)
    assert EventFile(damaged).records == 0 and len(list(EventFile(damaged).read())) == 1


def test_masked_crc32c_matches_tensorboard_s() -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as theirs

    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data) == theirs(data)
