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
import time
from dataclasses import dataclass
from typing import Any

# While paused, rank 0 sends an empty message this often, so the ranks waiting for it are never
# left in one collective long enough to reach its timeout (30 min by default), however long the pause.
KEEPALIVE_S = float(os.environ.get("TRAINPILOT_LOCKSTEP_KEEPALIVE_S", "10"))
# The ranks meet to share rank 0's commands about this often, and at least every MAX_GAP + 1 calls
# of wait_if_paused(): a command waits that long at most, and fast steps share one round trip.
MEET_EVERY_S = 0.1
MAX_GAP = 15


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


def agreed_spec(spec: dict[str, Any], given_id: bool) -> dict[str, Any] | None:
    """The run spec every rank can settle on without a collective, or None if only rank 0 can say.

    The `run_id` the caller gave, else one derived from torchrun's job id (TORCHELASTIC_RUN_ID, the
    same on every rank, new for each `--standalone` launch). Without a collective here, a script that
    makes its run (or a TensorBoard writer) on rank 0 alone, the usual pattern, does not hang.
    """
    if given_id:
        return spec
    job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if job == "none":  # torchrun's default rendezvous id: the same for every job
        return None
    run_id = "r-" + hashlib.sha256(job.encode()).hexdigest()[:8]
    return {**spec, "id": run_id, "name": spec["name"] if spec["name"] != spec["id"] else run_id}


def shared_spec(spec: dict[str, Any], given_id: bool, where: Ranks) -> tuple[dict[str, Any], Lockstep | None]:
    """The one run spec of every rank (`agreed_spec`, else rank 0's by broadcast), and the Lockstep
    that broadcast took (None when none was needed). Raises RuntimeError if the ranks cannot agree."""
    agreed = agreed_spec(spec, given_id)
    if agreed is not None:
        return agreed, None
    lockstep = joined(where.rank)
    if lockstep is None:
        raise RuntimeError(
            f"trainpilot.init() on rank {where.rank} of {where.world_size}: the ranks cannot agree "
            "on one run. Launch with torchrun, call torch.distributed.init_process_group() before "
            "trainpilot.init(), or pass the same run_id= on every rank."
        )
    return lockstep.share(spec if where.rank == 0 else None), lockstep


def joined(rank: int) -> Lockstep | None:
    """A Lockstep on a control group of its own, if this process is in a process group (a collective:
    every rank makes it at the same point); None if it is not."""
    dist = process_group()
    return None if dist is None else Lockstep(dist, rank)


class Lockstep:
    """Rank 0's message to every rank, at the same call of each rank's loop.

    The ranks meet about every `MEET_EVERY_S` (and at least every `MAX_GAP + 1` calls): each meeting
    is one broadcast of two ints, whether rank 0 has a message and how many calls every rank skips
    before the next meeting; only when there is a message is it pickled and broadcast too. As every
    rank counts the same calls, they all meet at the same one. A meeting is a round trip between the
    ranks, so fast steps share one. It runs on a gloo group of its own, on the CPU: with NCCL training
    it costs no GPU synchronisation, and it cannot interleave with the training's own collectives.
    """

    def __init__(self, dist: Any, rank: int) -> None:
        import torch

        self.rank = rank
        self._dist = dist
        # its own, dropped by Run.close(): a ProcessGroup object still alive when the interpreter
        # exits aborts the process from its destructor
        self._group = dist.new_group(backend="gloo")
        self._header = torch.zeros(2, dtype=torch.int64)  # [a message follows, calls to skip]
        self._skip = 0
        self._skipped = 0
        self._met_at = time.monotonic()

    def due(self) -> bool:
        """Whether the ranks meet at this call: the same answer on every rank."""
        if self._skip:
            self._skip -= 1
            self._skipped += 1
            return False
        return True

    def share(self, message: Any) -> Any:
        """Rank 0's `message` (None: nothing to say) on every rank; the others pass None."""
        if self.rank == 0:
            self._header[0] = message is not None
            self._header[1] = self._gap()
        self._dist.broadcast(self._header, src=0, group=self._group)
        self._skip = int(self._header[1])
        if not int(self._header[0]):
            return None
        box = [message]
        self._dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def _gap(self) -> int:
        """Rank 0: the calls to skip so that the next meeting comes about `MEET_EVERY_S` from now."""
        now = time.monotonic()
        per_call = (now - self._met_at) / (self._skipped + 1)
        self._met_at, self._skipped = now, 0
        return min(MAX_GAP, int(MEET_EVERY_S / per_call)) if per_call > 0 else MAX_GAP
