"""What a framework integration's callback costs per training step: the same training with and without it.

    ../.venv/bin/python integrations_overhead.py [--steps 300] [--rounds 3]     (from bench/)

Hugging Face: the Trainer fits a small digits classifier (scikit-learn's 8x8 images) on the CPU, 16
images a step, logging every step (`logging_steps=1`, the worst case for a logger), with no
evaluation and no saves. The callback variant adds `TrainpilotCallback` logging to a `trainpilot
serve` of this script's own, started once, in its own process. The variants alternate `--rounds`
times in one process, so the imports, the allocator and the machine's load weigh on both alike. A
step's time is the interval between two `on_step_end`s, measured after the first 20 steps, and
includes what the Trainer does for the step's log (its `.item()`, the callbacks' `on_log`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from trainpilot.integrations.huggingface import TrainpilotCallback
from trainpilot.server.runner import free_port

WARMUP = 20


class Digits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Images(Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        self.x, self.y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[index], "labels": self.y[index]}


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())

    def per_step_ms(self) -> tuple[float, float]:
        """The mean step (all the work, spikes included) and the median one (a typical step)."""
        warm = self.ends[WARMUP:]
        gaps = [b - a for a, b in itertools.pairwise(warm)]
        return sum(gaps) / len(gaps) * 1000, statistics.median(gaps) * 1000


class TimedCallback(TrainpilotCallback):
    """The callback with the time its per-step hooks take on the training thread added up: its own cost,
    apart from the machine's noise (the sender thread's work, off this thread, is not in it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inside = 0.0
        self.calls = 0

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_step_end(*args, **kwargs)
        self.inside += time.perf_counter() - start
        self.calls += 1

    def on_log(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_log(*args, **kwargs)
        self.inside += time.perf_counter() - start

    def per_step_us(self) -> float:
        return self.inside / max(1, self.calls) * 1e6


def train(out: str, steps: int, callback: TrainerCallback | None) -> tuple[float, float]:
    clock = StepClock()  # last, so a step's time includes the callback's on_step_end
    args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        warmup_steps=5,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    torch.manual_seed(0)
    callbacks = [callback, clock] if callback is not None else [clock]
    trainer = Trainer(model=Digits(), args=args, train_dataset=Images(), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # printing every log would dwarf what is measured
    trainer.train()
    return clock.per_step_ms()


def serve(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "trainpilot.cli", "serve", "--port", str(port), "--data-dir", data_dir]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/system/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("trainpilot serve did not start in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    torch.set_num_threads(1)  # the same few cores for every variant, however busy the machine is

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve(str(Path(tmp) / "server"))
        try:
            plain: list[tuple[float, float]] = []
            steered: list[tuple[float, float]] = []
            inside: list[float] = []
            for round_ in range(options.rounds):
                plain.append(train(f"{tmp}/plain{round_}", options.steps, None))
                callback = TimedCallback(
                    project="overhead", name=f"round-{round_}", server=url, data_dir=f"{tmp}/sdk"
                )
                steered.append(train(f"{tmp}/steered{round_}", options.steps, callback))
                inside.append(callback.per_step_us())
                print(
                    f"round {round_}: mean {plain[-1][0]:.3f} ms/step plain, {steered[-1][0]:.3f} with the "
                    f"callback; median {plain[-1][1]:.3f}, {steered[-1][1]:.3f}; "
                    f"{inside[-1]:.1f} us/step in its hooks"
                )
        finally:
            proc.terminate()
            proc.wait(15)

    summary: dict[str, Any] = {"framework": "huggingface", "steps": options.steps, "rounds": options.rounds}
    for index, kind in enumerate(("mean", "median")):
        without = statistics.median(times[index] for times in plain)  # the middle round of each variant
        with_ = statistics.median(times[index] for times in steered)
        summary[f"{kind}_step"] = {
            "plain_ms": round(without, 4),
            "callback_ms": round(with_, 4),
            "added_ms": round(with_ - without, 4),
            "ratio": round(with_ / without, 4),
        }
    summary["callback_hooks_us_per_step"] = round(statistics.median(inside), 2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
