"""A small classifier of scikit-learn's digits (real 8x8 images, shipped with the package) trained by the
Hugging Face `Trainer`, for the integration tests. The Trainer takes any `nn.Module` whose forward
returns a dict with ``loss``; the dataset yields dicts of its arguments."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments


class Digits(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(pixel_values)
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class DigitImages(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def digits() -> tuple[DigitImages, DigitImages]:
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32) / 16.0
    labels = torch.tensor(y)
    return DigitImages(images[:1500], labels[:1500]), DigitImages(images[1500:], labels[1500:])


def accuracy(prediction: Any) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def trainer(output_dir: str, callbacks: list[Any], **overrides: Any) -> Trainer:
    settings: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": 100_000,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 128,
        "learning_rate": 0.05,
        "lr_scheduler_type": "linear",
        "warmup_steps": 5,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 50,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        **overrides,
    }
    train, val = digits()
    torch.manual_seed(0)
    return Trainer(
        model=Digits(),
        args=TrainingArguments(**settings),
        train_dataset=train,
        eval_dataset=val,
        compute_metrics=accuracy,
        callbacks=callbacks,
    )
