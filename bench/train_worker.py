"""One training run of the reference trainer with one kind of telemetry, timed: steps per second.

    python bench/train_worker.py --variant {none,trainpilot,tensorboard} --epochs 60 --dir /tmp/x

`none` runs the trainer with a stand-in run that drops everything (the floor); `trainpilot` logs to
a real server; `tensorboard` writes the same scalars with torch's SummaryWriter and nothing else.
Prints one JSON object: steps, the loop's seconds and steps/s (the final flush, `finish()` or the
writer's `close()`, timed apart), and the training-loss points persisted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any


class NullRun:
    """What the trainer calls on a run, doing nothing: training without telemetry."""

    id = "no-telemetry"
    should_stop = False

    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def log_event(self, *args: Any, **kwargs: Any) -> None: ...
    def log_image(self, *args: Any, **kwargs: Any) -> None: ...
    def wait_if_paused(self) -> None: ...
    def on_control(self, *args: Any, **kwargs: Any) -> None: ...
    def finish(self, *args: Any, **kwargs: Any) -> None: ...


def time_calls(owner: Any, name: str) -> list[float]:
    """Wrap owner.name: the seconds spent in it add up in [0] of the returned list, the calls in [1]."""
    spent = [0.0, 0.0]
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started
            spent[1] += 1

    setattr(owner, name, timed)
    return spent


SENDER_CPU_S = [0.0]


def count_sender_cpu() -> None:
    """Record the CPU time of the SDK's sender thread, all of it, as the thread ends (finish())."""
    from trainpilot.sdk.sender import Sender

    original = Sender.run

    def counted(self: Sender) -> None:
        try:
            original(self)
        finally:
            SENDER_CPU_S[0] = time.thread_time()

    Sender.run = counted  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", required=True, choices=["none", "trainpilot", "tensorboard"])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cpu", type=int, help="pin the trainer (every thread) to this core")
    parser.add_argument("--server-cpu", type=int, help="pin the server to this core")
    args = parser.parse_args()
    if args.cpu is not None:  # before torch starts its threads, so they inherit it
        os.sched_setaffinity(0, {args.cpu})
    server_cpus = None if args.server_cpu is None else {args.server_cpu}

    import httpx
    from served import served

    import trainpilot
    from trainpilot.trainer.config import TrainConfig
    from trainpilot.trainer.train import Trainer

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=32,
        progress=False,
        tensorboard_dir=os.path.join(args.dir, "tb") if args.variant == "tensorboard" else None,
        checkpoint_dir=os.path.join(args.dir, "checkpoints"),
    )
    with contextlib.ExitStack() as stack:
        if args.variant == "trainpilot":
            count_sender_cpu()
            url = stack.enter_context(served(args.dir, cpus=server_cpus))[0]
            run: Any = trainpilot.init(project="bench", server=url, data_dir=os.path.join(args.dir, "client"))
        else:
            run = NullRun()
        trainer = Trainer(config, run)
        flush = time_calls(run, "finish")
        requests = time_calls(run._sender.transport, "send") if args.variant == "trainpilot" else [0.0, 0.0]
        if trainer.tb is not None:
            flush = time_calls(trainer.tb, "close")
        started, cpu = time.perf_counter(), time.process_time()
        trainer.fit()
        seconds = time.perf_counter() - started - flush[0]  # the loop; the final flush is told apart
        cpu_s = time.process_time() - cpu  # every thread of this process: training, and the SDK's sender
        persisted = 0
        if args.variant == "trainpilot":
            params = {"run_id": run.id, "keys": "train/loss", "max_points": 2}
            body = httpx.get(f"{url}/api/metrics/history", params=params, timeout=60).json()
            persisted = int(body["series"]["train/loss"]["total"])
        elif args.variant == "tensorboard":
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            acc = EventAccumulator(os.path.join(args.dir, "tb", run.id), size_guidance={"scalars": 0})
            acc.Reload()
            persisted = len(acc.Scalars("train/loss"))
    result = {
        "variant": args.variant,
        "steps": trainer.step,
        "seconds": seconds,
        "flush_s": flush[0],
        "steps_per_s": trainer.step / seconds,
        "persisted": persisted,
        "cpu_s": cpu_s,
        "sender_cpu_s": SENDER_CPU_S[0],  # the SDK's background thread, start to end (trainpilot only)
        "requests": int(requests[1]),  # batches the SDK posted (trainpilot only)
    }
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
