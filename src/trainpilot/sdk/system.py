"""The training process's own load (CPU, memory, GPU), as ``system/*`` metrics a run logs every few seconds.

The reference trainer and every framework integration log the same names, so the dashboard and the
detectors read one vocabulary whichever loop trained. Torch is consulted only where the training script
has already imported it: the SDK never imports it itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psutil

_process = psutil.Process()


def system_metrics(device: Any = None) -> dict[str, float]:
    """CPU and memory of this machine and process, and GPU memory where `device` is a CUDA device
    (default: the current one, if this process uses CUDA)."""
    memory = psutil.virtual_memory()
    out = {
        "system/cpu_percent": psutil.cpu_percent(None),
        "system/ram_percent": memory.percent,
        "system/process_rss_mb": _process.memory_info().rss / 2**20,
    }
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return out
    if device is None or getattr(device, "type", "cuda") == "cuda":
        out["system/gpu_memory_mb"] = torch.cuda.memory_allocated(device) / 2**20
        out["system/gpu_memory_reserved_mb"] = torch.cuda.memory_reserved(device) / 2**20
        try:
            out["system/gpu_utilization_percent"] = float(torch.cuda.utilization(device))
        except Exception:  # needs pynvml; absent is fine
            pass
    return out


class Every:
    """True once per `seconds`: how a per-batch hook decides it is time for the system metrics."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True
