"""A training loop for `torchrun` (tests/test_distributed.py): each rank writes down the step at which
each command reached it, so the test can check that every rank applied it at the same step.

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py SERVER_URL OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import trainpilot


def main() -> None:
    url, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    # as under a launcher that sets no job id: the ranks take rank 0's run id by broadcast
    os.environ.pop("TORCHELASTIC_RUN_ID", None)
    rank = dist.get_rank()
    run = trainpilot.init(project="ddp-sdk", server=url, data_dir=str(out / f"data{rank}"))
    journal = open(out / f"rank{rank}.jsonl", "a", buffering=1)
    step = 0

    def record(what: str, value: Any = None) -> Any:
        journal.write(json.dumps({"what": what, "step": step, "value": value, "run_id": run.id}) + "\n")
        return f"{what} on rank {rank}"

    for action in ("pause", "resume", "stop", "checkpoint", "set_lr"):
        run.on_control(action, lambda value, action=action: record(action, value))
    record("init")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run.wait_if_paused()
        if run.should_stop:
            break
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)  # the training's own collective, as DDP's gradients would be
        run.log({"loss": 1.0 / (step + 1), "from_rank": rank}, step=step)
        run.log_rank({"step": step, "sum": float(total)}, step=step)
        step += 1
        time.sleep(0.01)
    record("end")
    run.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
