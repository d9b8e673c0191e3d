"""One tool's cost of logging 8 scalars per training step, in a process of its own.

    python bench/log_worker.py --tool trackio --steps 20000 --dir /tmp/x

Runs in the tool's own interpreter (a peer's virtual environment, or trainpilot's), so it imports
nothing of trainpilot unless the tool is trainpilot. Times every call with `perf_counter_ns`, then
the flush (`finish()`, `close()`, ...), then reads back from disk or server what was persisted, so
nothing dropped is counted as fast. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import queue
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

KEYS = [f"train/metric_{i}" for i in range(8)]


def values(step: int) -> dict[str, float]:
    return {key: 1.0 / (step + 1) + i for i, key in enumerate(KEYS)}


def timed(log: Callable[[int, dict[str, float]], Any], steps: int) -> list[int]:
    """Per-call nanoseconds; the dicts are built outside the timed region, as a training loop has them."""
    samples = [0] * steps
    clock = time.perf_counter_ns
    for step in range(steps):
        data = values(step)
        started = clock()
        log(step, data)
        samples[step] = clock() - started
    return samples


# -- each tool: set up, return (log, finish, count_persisted, version) --------------------------------


def floor_append(d: str) -> tuple[Any, ...]:
    kept: list[Any] = []
    return lambda s, m: kept.append(m), lambda: None, lambda: len(kept), sys.version.split()[0]


def floor_queue(d: str) -> tuple[Any, ...]:
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    return lambda s, m: q.put(m), lambda: None, q.qsize, sys.version.split()[0]


def trainpilot_tool(d: str, up: bool) -> tuple[Any, ...]:
    import contextlib

    import httpx
    from served import served

    import trainpilot

    stack = contextlib.ExitStack()
    url = stack.enter_context(served(d))[0] if up else "http://127.0.0.1:9"
    run = trainpilot.init(project="bench", server=url, data_dir=os.path.join(d, "client"), control=False)

    def finish() -> None:
        run.finish(timeout=600 if up else 1)

    def persisted() -> int:
        if not up:  # spooled to disk: count the spooled metrics events
            total = 0
            for path in glob.glob(os.path.join(d, "client", "spool", "*.jsonl")):
                with open(path, "rb") as f:
                    for line in f:
                        batch = json.loads(line)
                        total += sum(1 for e in batch.get("events", []) if e.get("kind") == "metrics")
            return total
        params = {"run_id": run.id, "keys": KEYS[0], "max_points": 2}
        body = httpx.get(f"{url}/api/metrics/history", params=params, timeout=60).json()
        stack.close()
        return int(body["series"][KEYS[0]]["total"])

    return lambda s, m: run.log(m, step=s), finish, persisted, trainpilot.__version__


def tensorboard_reader(d: str) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(d, size_guidance={"scalars": 0})
    acc.Reload()
    return len(acc.Scalars(KEYS[0]))


def torch_tensorboard(d: str) -> tuple[Any, ...]:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(d)

    def log(step: int, m: dict[str, float]) -> None:
        for key, value in m.items():
            writer.add_scalar(key, value, step)

    return log, writer.close, lambda: tensorboard_reader(d), torch.__version__


def tensorboardx(d: str) -> tuple[Any, ...]:
    import tensorboardX

    writer = tensorboardX.SummaryWriter(d)

    def log(step: int, m: dict[str, float]) -> None:
        for key, value in m.items():
            writer.add_scalar(key, value, step)

    return log, writer.close, lambda: tensorboard_reader(d), tensorboardX.__version__


def mlflow_tool(d: str, synchronous: bool) -> tuple[Any, ...]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{d}/mlflow.db")
    run = mlflow.start_run()

    def finish() -> None:
        if not synchronous:
            mlflow.flush_async_logging()
        mlflow.end_run()

    def persisted() -> int:
        with sqlite3.connect(f"{d}/mlflow.db") as conn:
            row = conn.execute(
                "SELECT count(*) FROM metrics WHERE key=? AND run_uuid=?", (KEYS[0], run.info.run_id)
            ).fetchone()
        return int(row[0])

    def log(step: int, m: dict[str, float]) -> None:
        mlflow.log_metrics(m, step=step, synchronous=synchronous)

    return log, finish, persisted, mlflow.__version__


def aim_tool(d: str) -> tuple[Any, ...]:
    import subprocess

    import aim

    run = aim.Run(repo=d, system_tracking_interval=None, capture_terminal_logs=False, log_system_params=False)
    run_hash = run.hash

    def log(step: int, m: dict[str, float]) -> None:
        for key, value in m.items():
            run.track(value, name=key, step=step)

    def persisted() -> int:
        # Aim indexes a closed run lazily; without this its own API does not find it yet.
        aim_cli = os.path.join(os.path.dirname(sys.executable), "aim")
        subprocess.run([aim_cli, "storage", "--repo", d, "reindex", "--yes"], capture_output=True, check=True)
        from aim.storage.context import Context

        found = aim.Repo.from_path(d).get_run(run_hash)
        steps, _values = found.get_metric(KEYS[0], Context({})).data.view("val").items_list()
        return len(steps)

    return log, run.close, persisted, aim.__version__.__version__


def trackio_tool(d: str) -> tuple[Any, ...]:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # its banner
        import trackio

        trackio.init(project="bench", name="run", auto_log_cpu=False, auto_log_gpu=False, embed=False)

    def persisted() -> int:
        total = 0
        for path in glob.glob(os.path.join(os.environ["TRACKIO_DIR"], "*.db")):
            with sqlite3.connect(path) as conn:
                sql = "SELECT count(*) FROM metrics WHERE json_extract(metrics, ?) IS NOT NULL"
                row = conn.execute(sql, (f'$."{KEYS[0]}"',)).fetchone()
                total += int(row[0])
        return total

    return lambda s, m: trackio.log(m, step=s), trackio.finish, persisted, trackio.__version__


def wandb_tool(d: str) -> tuple[Any, ...]:
    import wandb

    settings = wandb.Settings(
        x_disable_stats=True,
        x_disable_meta=True,
        x_disable_machine_info=True,
        console="off",
        disable_git=True,
        save_code=False,
        silent=True,
    )
    run = wandb.init(mode="offline", dir=d, project="bench", settings=settings)

    def persisted() -> int:
        from wandb.proto import wandb_internal_pb2

        (path,) = glob.glob(f"{d}/wandb/offline-run-*/run-*.wandb")
        count = 0
        for data in wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                keys = [item.key or "/".join(item.nested_key) for item in record.history.item]
                count += keys.count(KEYS[0])
        return count

    return lambda s, m: run.log(m, step=s), run.finish, persisted, wandb.__version__


def wandb_records(path: str) -> list[bytes]:
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte file header, then 32 KiB
    blocks of chunks, each with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle /
    4 last). The package ships no reader for it."""
    import struct

    with open(path, "rb") as f:
        buf = f.read()
    block, pos, out, part = 32768, 7, [], b""
    while pos < len(buf):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", buf, pos)
        if kind == 0 and length == 0:
            pos += left
            continue
        data = buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(data)
        elif kind == 2:
            part = data
        elif kind == 3:
            part += data
        elif kind == 4:
            out.append(part + data)
            part = b""
    return out


TOOLS: dict[str, Callable[[str], tuple[Any, ...]]] = {
    "list.append": floor_append,
    "SimpleQueue.put": floor_queue,
    "trainpilot (server up)": lambda d: trainpilot_tool(d, up=True),
    "trainpilot (server down, spooling)": lambda d: trainpilot_tool(d, up=False),
    "torch SummaryWriter": torch_tensorboard,
    "tensorboardX": tensorboardx,
    "MLflow (sync, SQLite)": lambda d: mlflow_tool(d, synchronous=True),
    "MLflow (async, SQLite)": lambda d: mlflow_tool(d, synchronous=False),
    "Aim": aim_tool,
    "Trackio": trackio_tool,
    "W&B (offline)": wandb_tool,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", required=True, choices=list(TOOLS))
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    log, finish, persisted, version = TOOLS[args.tool](args.dir)
    setup_s = time.perf_counter() - started
    samples = timed(log, args.steps)
    started = time.perf_counter()
    finish()
    finish_s = time.perf_counter() - started
    result = {
        "tool": args.tool,
        "version": str(version),
        "steps": args.steps,
        "setup_s": setup_s,
        "finish_s": finish_s,
        "persisted": persisted(),
        "samples_ns": samples,
    }
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
