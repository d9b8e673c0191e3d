"""Writer ``hf``: the real Hugging Face `Trainer` with its TensorBoard callback.

Names are the Trainer's own: ``train/loss``, ``train/learning_rate``, ``train/grad_norm``,
``train/epoch`` every ``logging_steps``; ``eval/loss``, ``eval/accuracy`` (our `compute_metrics`,
as a user writes it), ``eval/runtime``, ``eval/samples_per_second`` at each evaluation; the run
summary (``train/train_runtime`` ...) at the end. Its defaults stay on: gradient clipping at 1.0,
AdamW, and ``logging_nan_inf_filter`` (a NaN training loss is left out of the logged mean, so the
NaN shows in the gradient norm and the evaluation first, as it does for a real user).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from corpus.world import loop, pipeline, runio, tasks
from corpus.world.cases import Case, faulty, harmless, healthy
from corpus.world.data import Data, make

WRITER = "hf"


class Wrapped(nn.Module):
    """What the Trainer expects of a model: inputs by name, a dict with the loss."""

    def __init__(self, net: nn.Module, data: Data, opts: dict[str, Any]) -> None:
        super().__init__()
        self.net, self.task, self.opts = net, data.task, opts
        # the Trainer reads model.config (label smoothing checks its problem_type)
        self.config = PretrainedConfig(problem_type="single_label_classification")

    def forward(self, pixel_values: torch.Tensor, labels: Any = None) -> dict[str, Any]:
        logits = self.net(pixel_values)
        if labels is None:
            return {"logits": logits}
        loss, _ = tasks.loss(self.task, logits, labels, self.opts)
        return {"loss": loss, "logits": logits}


class Rows(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool) -> None:
        self.x, self.y, self.train = x, y, train

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"pixel_values": self.x[i], "labels": self.y[i], "train": self.train}


class StopOnNaN(TrainerCallback):  # type: ignore[misc]
    """The user who stops a run whose gradient norm has been NaN for a few logs."""

    def __init__(self) -> None:
        self.bad = 0

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        g = (logs or {}).get("grad_norm")
        if g is not None:
            self.bad = 0 if math.isfinite(g) else self.bad + 1
            if self.bad >= 4:
                control.should_training_stop = True


def metrics_fn(data: Data, per_class: bool) -> Any:
    def compute(pred: Any) -> dict[str, float]:
        out, y = torch.from_numpy(np.asarray(pred.predictions)), torch.from_numpy(np.asarray(pred.label_ids))
        m = tasks.evaluate(data.task, nn.Identity(), [(out, y)], data.num_classes)
        if data.task == "classification":
            keep = {"accuracy": m["acc"]}
            if per_class:
                keep.update({f"accuracy_{data.classes[c]}": m[f"acc_{c}"] for c in range(data.num_classes)})
            return keep
        return {"iou": m["iou"]} if data.task == "segmentation" else {"pixel_error": m["pixel_error"]}

    return compute


def record(case: Case, work: Path) -> list[runio.Event]:
    data = make(case.dataset, case.seed, case.fault)
    net = loop.model_for(case, data)
    model = Wrapped(net, data, {"wrong_loss": case.fault.get("wrong_loss")})
    train_collate = pipeline.Collate(data, case.aug, case.fault, case.seed)
    val_collate = pipeline.Collate(data, "", {}, case.seed, train=False)

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        fn = train_collate if rows[0]["train"] else val_collate
        x, y = fn([(r["pixel_values"], r["labels"]) for r in rows])
        return {"pixel_values": x, "labels": y}

    optim = {"adamw": "adamw_torch", "adam": "adamw_torch", "sgd": "sgd"}[case.optimizer]
    args = TrainingArguments(
        output_dir=str(work / "out"),
        report_to=["tensorboard"],
        logging_steps=case.extra["logging_steps"],
        eval_strategy="epoch",
        save_strategy="no",
        num_train_epochs=case.epochs,
        per_device_train_batch_size=case.batch,
        per_device_eval_batch_size=256,
        learning_rate=case.lr,
        weight_decay=case.weight_decay,
        lr_scheduler_type=case.schedule,
        warmup_steps=case.extra.get("warmup_steps", 0),
        optim=optim,
        optim_args="momentum=0.9" if optim == "sgd" else None,
        label_smoothing_factor=case.label_smoothing,
        max_grad_norm=case.extra.get("max_grad_norm", 1.0),
        seed=case.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_drop_last=len(data.train_x) > 4 * case.batch,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Rows(data.train_x, data.train_y, True),
        eval_dataset=Rows(data.val_x, data.val_y, False),
        data_collator=collate,
        compute_metrics=metrics_fn(data, case.extra.get("per_class", False)),
        callbacks=[StopOnNaN()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log; the events are what we keep
    trainer.train()
    return runio.from_logdir(work / "out" / "runs")


def cases() -> list[Case]:
    def c(dataset: str, model: str, **kw: Any) -> Case:
        base = {"optimizer": "adamw", "lr": 2e-3, "schedule": "linear", "weight_decay": 0.0}
        return Case(WRITER, dataset, model, **{**base, "epochs": 6, **kw})

    seg = c("seg", "unet", epochs=5, batch=16)
    kp = c("keypoints", "cnn", epochs=8)
    out = [
        healthy(c("digits", "cnn"), "base"),
        healthy(c("textures", "vit", width=24), "label_smoothing"),
        healthy(c("shapes", "resnet", schedule="cosine", extra={"warmup_steps": 30}), "cosine_warmup"),
        healthy(c("digits", "mlp", schedule="constant"), "constant_lr"),
        healthy(c("textures", "cnn"), "mixup"),
        healthy(c("digits", "resnet", optimizer="sgd", lr=0.05), "sgd"),
        healthy(seg, "base"),
        healthy(kp, "base"),
        faulty(c("digits", "cnn"), "lr_high"),
        faulty(c("textures", "cnn"), "lr_low"),
        faulty(c("digits", "cnn"), "label_noise"),
        faulty(c("digits", "cnn", extra={"per_class": True}), "rare_class"),
        faulty(c("textures", "resnet"), "corrupt_nan"),
        faulty(c("digits", "mlp"), "unnormalised"),
        faulty(c("digits", "mlp"), "sigmoid_deep"),
        faulty(c("digits", "cnn"), "wrong_loss"),
        faulty(c("textures", "cnn"), "overfit"),
        faulty(c("shapes", "resnet"), "frozen_backbone"),
        faulty(c("textures", "cnn"), "dying_relu"),
        harmless(
            faulty(c("digits", "mlp"), "exploding"),
            "the Trainer's default clipping at 1.0 and AdamW trained the deep MLP with weights x2.5 to 0.97",
        ),
        faulty(c("textures", "cnn"), "corrupt_huge"),
    ]
    for i, case in enumerate(out):
        case.seed = 300 + i
        if case.schedule == "cosine" and case.label != "healthy":
            case.schedule = "linear"
        if case.schedule == "none":
            case.schedule = "constant"
        case.extra = {"logging_steps": (5, 10, 1, 25)[i % 4], **case.extra}
        if case.label in ("overfit",):
            case.extra["logging_steps"] = 1
    return out
