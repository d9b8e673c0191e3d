"""What the control collective costs each step under torchrun (docs/architecture.md, "Control").

    torchrun --standalone --nproc-per-node 2 bench/ddp_control.py [ROUNDS] [STEPS]

On every rank: a bare loop of `run.wait_if_paused()` (the collective alone: one broadcast of one
int on the control group), then the reference trainer's small CNN on digits under
DistributedDataParallel, timed in alternating rounds with and without the call per step (the
median round of each, so a busy machine's noise hits both alike). Rank 0 prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import torch.distributed as dist

import trainpilot
from trainpilot.train import Trainer, join_process_group
from trainpilot.trainconfig import TrainConfig


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    join_process_group("cpu")
    with tempfile.TemporaryDirectory() as data_dir:
        # no server: events spool on the sender thread; the training thread's cost is what counts
        run = trainpilot.init(project="bench", server="http://127.0.0.1:9", data_dir=data_dir)
        run.wait_if_paused()  # the first call makes the control group
        dist.barrier()
        alone: list[float] = []
        for _ in range(steps * 10):
            started = time.perf_counter()
            run.wait_if_paused()
            alone.append((time.perf_counter() - started) * 1e6)

        cfg = TrainConfig(device="cpu", batch_size=32, progress=False, tensorboard_dir=None, epochs=1000)
        trainer = Trainer(cfg, run)
        order = trainer._epoch_order()
        with_call: list[float] = []
        without: list[float] = []
        for _ in range(rounds):
            for timings, call in ((with_call, True), (without, False)):
                dist.barrier()
                started = time.perf_counter()
                for i in range(steps):
                    if call:
                        run.wait_if_paused()
                    at = i * trainer.global_batch % (len(order) - trainer.global_batch)
                    trainer.train_step(order[at : at + trainer.global_batch][trainer.rank :: trainer.world])
                timings.append((time.perf_counter() - started) / steps * 1e3)
        run.close(timeout=1)
    if dist.get_rank() == 0:
        step_ms, bare_ms = statistics.median(with_call), statistics.median(without)
        print(
            json.dumps(
                {
                    "ranks": dist.get_world_size(),
                    "wait_if_paused_alone_us_p50": round(statistics.median(alone), 1),
                    "wait_if_paused_alone_us_mean": round(statistics.mean(alone), 1),
                    "ddp_step_ms_with_call": round(step_ms, 3),
                    "ddp_step_ms_without": round(bare_ms, 3),
                    "overhead_percent": round((step_ms - bare_ms) / bare_ms * 100, 2),
                    "steps_per_s_with_call": round(1e3 / step_ms, 1),
                    "steps_per_s_without": round(1e3 / bare_ms, 1),
                }
            )
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
