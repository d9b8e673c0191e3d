"""Training under `torchrun`: one run for all ranks, and every command applied at the same step on each.

Only rank 0 talks to the server about the run and listens for commands; every rank calls
`run.wait_if_paused()` at its step boundary, where `Lockstep.share` hands rank 0's news to all of
them in one collective (docs/architecture.md, "Control"). The SDK never imports torch itself: this
module touches `torch.distributed` only when the training script has already imported torch.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any

# While paused, rank 0 sends an empty message this often, so the ranks waiting for it are never
# left in one collective long enough to reach its timeout (30 min by default), however long the pause.
KEEPALIVE_S = float(os.environ.get("TRAINPILOT_LOCKSTEP_KEEPALIVE_S", "10"))


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def process_group() -> Any:
    """`torch.distributed` when this process imported torch and joined a process group, else None."""
    if "torch" not in sys.modules:
        return None  # a user without torch (or not using it yet) must not pay for importing it
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def ranks() -> Ranks:
    """This process's place in the job: from the process group if there is one, else torchrun's env."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dist = process_group()
    if dist is not None:
        return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)
    return Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local_rank)


def shared_spec(spec: dict[str, Any], given_id: bool, where: Ranks) -> dict[str, Any]:
    """The run spec all ranks use, agreed without a collective where possible.

    The `run_id` the caller gave, else one derived from torchrun's job id (TORCHELASTIC_RUN_ID, the
    same on every rank, new for each `--standalone` launch), else rank 0's, broadcast over the
    process group. No collective in the first two cases, so a script that makes its run (or a
    TensorBoard writer) on rank 0 alone does not hang here; with none of the three there is no way
    to make one run, which is an error.
    """
    if given_id:
        return spec
    job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if job != "none":  # "none": torchrun's default rendezvous id, the same for every job
        run_id = "r-" + hashlib.sha256(job.encode()).hexdigest()[:8]
        return {**spec, "id": run_id, "name": spec["name"] if spec["name"] != spec["id"] else run_id}
    dist = process_group()
    if dist is not None:
        box = [spec]
        dist.broadcast_object_list(box, src=0, group=control_group(dist))
        shared: dict[str, Any] = box[0]
        return shared
    raise RuntimeError(
        f"trainpilot.init() on rank {where.rank} of {where.world_size}: the ranks cannot agree on one run. "
        "Launch with torchrun, call torch.distributed.init_process_group() before trainpilot.init(), "
        "or pass the same run_id= on every rank."
    )


_groups: list[tuple[Any, Any]] = []  # (the process group it was made in, the control group)


def control_group(dist: Any) -> Any:
    """A gloo group of all ranks for control, made once per process group (every rank makes it at
    the same point, its first `init()` or `wait_if_paused()`, as `new_group` requires)."""
    world = dist.group.WORLD
    if not _groups or _groups[0][0] is not world:
        _groups[:] = [(world, dist.new_group(backend="gloo"))]
    return _groups[0][1]


class Lockstep:
    """Rank 0's message to every rank, at the same point of each rank's loop.

    One broadcast of a one-element tensor per call says whether rank 0 has anything to say; only
    then is the message itself pickled and broadcast. It runs on a gloo group of its own, on the
    CPU: with NCCL training it costs no GPU synchronisation, and it cannot interleave with the
    training's own collectives.
    """

    def __init__(self, dist: Any, rank: int) -> None:
        import torch

        self.rank = rank
        self._dist = dist
        self._group = control_group(dist)
        self._flag = torch.zeros(1, dtype=torch.int32)

    def share(self, message: Any) -> Any:
        """Rank 0's `message` (None: nothing to say) on every rank; the others pass None."""
        if self.rank == 0:
            self._flag[0] = 0 if message is None else 1
        self._dist.broadcast(self._flag, src=0, group=self._group)
        if not int(self._flag[0]):
            return None
        box = [message]
        self._dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]
