"""One timed training of scikit-learn's digits under a framework, with or without trainpilot's
integration, in a process of its own; prints ``RESULT {json}``.

    python integration_worker.py --framework lightning --variant trainpilot --steps 600 --server URL

Time per step is measured between the end of batch `--warmup` and the end of the last batch by a timing
hook that is there in both variants, so the framework's start-up and the run's creation are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
from sklearn.datasets import load_digits


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


class Clock:
    """perf_counter at the end of every batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def tick(self) -> None:
        self.ends.append(time.perf_counter())


def lightning(args: argparse.Namespace, clock: Clock, folder: str) -> None:
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Timing(pl.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            clock.tick()

    x, y = digits()
    loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=16, shuffle=True)
    callbacks: list[Any] = [Timing()]
    logger: Any = False
    if args.variant == "trainpilot":
        from trainpilot.integrations.lightning import TrainpilotCallback, TrainpilotLogger

        logger = TrainpilotLogger(project="bench-integrations", server=args.server, data_dir=folder)
        callbacks.insert(0, TrainpilotCallback())
    trainer = pl.Trainer(
        default_root_dir=folder,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        max_steps=args.steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Module(), loader)


def huggingface(args: argparse.Namespace, clock: Clock, folder: str) -> None:
    import torch
    from torch import nn
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.net(pixel_values)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    class Images(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __init__(self) -> None:
            x, y = digits()
            self.x, self.y = torch.tensor(x), torch.tensor(y)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"pixel_values": self.x[index], "labels": self.y[index]}

    class Timing(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.tick()

    callbacks: list[Any] = [Timing()]  # last, so a step's time includes the integration's on_step_end
    if args.variant == "trainpilot":
        from trainpilot.integrations.huggingface import TrainpilotCallback

        callbacks.insert(
            0, TrainpilotCallback(project="bench-integrations", server=args.server, data_dir=folder)
        )
    training = TrainingArguments(
        output_dir=folder,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=Module(), args=training, train_dataset=Images(), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # printing every log would dwarf what is measured
    trainer.train()


def keras_fit(args: argparse.Namespace, clock: Clock, folder: str) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    class Timing(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            clock.tick()
            if len(clock.ends) >= args.steps:  # `fit()` counts epochs, not steps
                self.model.stop_training = True

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks: list[Any] = [Timing()]  # last, so a step's time includes the integration's batch end
    if args.variant == "trainpilot":
        from trainpilot.integrations.keras import TrainpilotCallback

        callbacks.insert(
            0, TrainpilotCallback(project="bench-integrations", server=args.server, data_dir=folder)
        )
    x, y = digits()
    model.fit(x, y, batch_size=16, epochs=10_000, callbacks=callbacks, verbose=0)


FRAMEWORKS = {"lightning": lightning, "huggingface": huggingface, "keras": keras_fit}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=sorted(FRAMEWORKS), required=True)
    parser.add_argument("--variant", choices=["none", "trainpilot"], required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--server", default=os.environ.get("TRAINPILOT_SERVER", "http://127.0.0.1:8765"))
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the server has the other core; both variants alike
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="tp-integ-") as folder:
        FRAMEWORKS[args.framework](args, clock, folder)
    ends = clock.ends
    if len(ends) <= args.warmup + 1:
        sys.exit(f"only {len(ends)} batches ran")
    per_step = (ends[-1] - ends[args.warmup]) / (len(ends) - 1 - args.warmup)
    print("RESULT " + json.dumps({"steps": len(ends), "ms_per_step": 1000 * per_step}), flush=True)


if __name__ == "__main__":
    main()
