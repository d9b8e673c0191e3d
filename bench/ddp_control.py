"""What the control collective costs each step under torchrun (docs/architecture.md, "Control").

    torchrun --standalone --nproc-per-node 2 bench/ddp_control.py [ROUNDS] [STEPS] [--every-step]

--every-step makes the ranks meet at every call (distributed.MAX_GAP = 0), as the first version did.

On every rank: a bare loop of `run.wait_if_paused()` (the collective alone; most calls skip it, so
the mean is the amortised cost of a meeting), then the reference trainer's small CNN on digits under
DistributedDataParallel, after a warm-up, timed in alternating rounds with and without the call
per step (the median round of each, so a busy machine's noise hits both alike), and the time spent inside the
call during those steps, on each rank (rank 0 sends; the others wait for it). Rank 0 prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import torch.distributed as dist

import trainpilot
from trainpilot.sdk import distributed
from trainpilot.trainer.config import TrainConfig
from trainpilot.trainer.train import Trainer, join_process_group


def main() -> None:
    if "--every-step" in sys.argv:
        sys.argv.remove("--every-step")
        distributed.MAX_GAP = 0
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
        in_call: list[float] = []  # inside wait_if_paused() during the training steps, µs
        for _ in range(steps):  # warm-up, not measured
            trainer.train_step(order[: trainer.global_batch][trainer.rank :: trainer.world])
        for r in range(rounds):
            pair = ((with_call, True), (without, False))
            for timings, call in pair if r % 2 == 0 else pair[::-1]:  # neither always goes first
                dist.barrier()
                started = time.perf_counter()
                for i in range(steps):
                    if call:
                        entered = time.perf_counter()
                        run.wait_if_paused()
                        in_call.append((time.perf_counter() - entered) * 1e6)
                    at = i * trainer.global_batch % (len(order) - trainer.global_batch)
                    trainer.train_step(order[at : at + trainer.global_batch][trainer.rank :: trainer.world])
                timings.append((time.perf_counter() - started) / steps * 1e3)
        run.close(timeout=1)
    mine = {
        "alone_us_p50": round(statistics.median(alone), 1),
        "alone_us_mean": round(statistics.mean(alone), 1),
        "in_ddp_step_us_p50": round(statistics.median(in_call), 1),
        "in_ddp_step_us_mean": round(statistics.mean(in_call), 1),
    }
    every: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, mine)
    if dist.get_rank() == 0:
        step_ms, bare_ms = statistics.median(with_call), statistics.median(without)
        report = {
            "ranks": dist.get_world_size(),
            "wait_if_paused_per_rank": every,
            "ddp_step_ms_with_call": round(step_ms, 3),
            "ddp_step_ms_without": round(bare_ms, 3),
            "overhead_percent": round((step_ms - bare_ms) / bare_ms * 100, 2),
        }
        print(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
