"""Writer ``timm``: real timm models, optimisers, schedulers, Mixup and losses, in the shape of
timm's ``train.py``.

timm's train script leaves two records: a log line every ``log_interval`` batches (loss, batch
time, data time, lr, rate) and ``summary.csv`` per epoch, written by `timm.utils.update_summary`
(``epoch``, ``train_loss``, ``eval_loss``, ``eval_top1``, ``eval_top5`` in percent, ``lr``). Both
are kept: the log line's fields as ``loss``, ``batch_time``, ``data_time``, ``lr``,
``samples_per_sec`` at their step, the summary row at the step that ends its epoch. No gradient
norm: train.py does not log one. Models are built from scratch (``pretrained=False``).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, update_summary

from corpus.world import loop, runio
from corpus.world.cases import Case, faulty, healthy
from corpus.world.data import make

WRITER = "timm"
# timm's own tiny test models (real timm architectures, a few hundred thousand weights: CPU-sized)
MODELS = {
    "test_resnet": {},
    "test_vit": {"img_size": 16, "patch_size": 4},
    "test_efficientnet": {},
    "test_byobnet": {},
}


def build(case: Case, channels: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    model = timm.create_model(
        case.model,
        pretrained=False,
        num_classes=classes,
        in_chans=channels,
        drop_rate=case.dropout,
        **MODELS[case.model],
    )
    if case.fault.get("frozen_backbone"):  # only the classifier trains
        head = {id(p) for p in model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
    return model


def record(case: Case, work: Path) -> list[runio.Event]:
    data = make(case.dataset, case.seed, case.fault)
    model = build(case, data.channels, data.num_classes)
    mixup = None
    if case.aug in ("mixup", "cutmix"):
        alpha = {"mixup_alpha": 0.8} if case.aug == "mixup" else {"cutmix_alpha": 1.0}
        mixup = Mixup(**alpha, label_smoothing=0.1, num_classes=data.num_classes)
    if mixup is not None:
        criterion: torch.nn.Module = SoftTargetCrossEntropy()
    elif case.label_smoothing:
        criterion = LabelSmoothingCrossEntropy(case.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    events: list[runio.Event] = []
    every = case.extra["log_interval"]
    meters = {k: AverageMeter() for k in ("loss", "batch_time", "data_time")}
    summary = work / "summary.csv"
    holder: dict[str, Any] = {}

    def framework(model: torch.nn.Module, updates_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        opt = create_optimizer_v2(
            model, opt=case.optimizer, lr=case.lr, weight_decay=case.weight_decay, momentum=0.9
        )
        sched, _ = create_scheduler_v2(
            opt,
            sched=case.schedule,
            num_epochs=case.epochs,
            warmup_epochs=case.extra.get("warmup_epochs", 0),
            decay_epochs=case.extra.get("decay_epochs", case.epochs // 2),
            decay_milestones=[case.epochs // 2, 3 * case.epochs // 4],
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
        holder["opt"] = opt
        return opt, sched

    def on_step(step: int, epoch: int, n: dict[str, float]) -> None:
        for k in meters:
            meters[k].update(n["step_time" if k == "batch_time" else k])
        if step % every == 0:
            row = {
                "loss": n["loss"],
                "batch_time": n["step_time"],
                "data_time": n["data_time"],
                "lr": n["lr"],
            }
            row["samples_per_sec"] = n["throughput"]
            events.append({"kind": "metrics", "step": step, "ts": time.time(), "data": row})

    def on_eval(step: int, epoch: int, m: dict[str, float]) -> None:
        lr = holder["opt"].param_groups[0]["lr"]
        evals = {"loss": m["loss"], "top1": 100 * m["acc"], "top5": 100 * m["top5"]}
        update_summary(epoch, {"loss": meters["loss"].avg}, evals, str(summary), lr=lr)
        meters["loss"].reset()
        holder.setdefault("steps", {})[epoch] = step - 1

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if case.fault.get("wrong_loss"):
            out = out.softmax(1)
        return criterion(out, y), {}

    # the pipeline's own mixing is off here: timm's Mixup mixes (after the pipeline's shift-and-flip)
    piped = dataclasses.replace(case, aug="aug") if mixup else case
    loop.run(
        piped,
        on_step,
        on_eval,
        model=model,
        loss_fn=loss_fn,
        framework=framework,
        batch_fn=(lambda x, y: mixup(x, y)) if mixup else None,
    )
    with summary.open() as f:
        rows = list(csv.DictReader(f))
    ts = time.time()
    for row in rows:
        data_row = {k: float(v) for k, v in row.items()}
        events.append(
            {"kind": "metrics", "step": holder["steps"][int(row["epoch"])], "ts": ts, "data": data_row}
        )
    return runio.merge(sorted(events, key=lambda e: e["step"]))


def cases() -> list[Case]:
    def c(dataset: str, model: str, **kw: Any) -> Case:
        base = {"optimizer": "sgd", "lr": 0.05, "schedule": "cosine", "weight_decay": 2e-5, "epochs": 6}
        return Case(WRITER, dataset, model, **{**base, **kw})

    vit = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    out = [
        healthy(c("textures", "test_resnet", extra={"warmup_epochs": 1}), "base"),
        healthy(c("textures", "test_byobnet"), "mixup"),
        healthy(c("textures", "test_vit", **vit), "label_smoothing"),
        healthy(c("textures", "test_efficientnet", optimizer="rmsproptf", lr=1e-3), "rmsprop"),
        healthy(c("textures", "test_resnet", **vit), "cutmix"),
        healthy(c("textures", "test_efficientnet", schedule="multistep"), "step_decay"),
        healthy(c("shapes", "test_resnet"), "batch16"),
        healthy(c("textures", "test_byobnet", extra={"warmup_epochs": 2}), "batch256"),
        faulty(c("textures", "test_resnet"), "lr_high"),
        faulty(c("textures", "test_vit", **vit), "lr_low"),
        faulty(c("textures", "test_byobnet"), "slow_loader"),
        faulty(c("textures", "test_efficientnet"), "unshuffled"),
        faulty(c("textures", "test_resnet"), "label_noise"),
        faulty(c("shapes", "test_efficientnet"), "corrupt_nan"),
        faulty(c("textures", "test_byobnet"), "frozen_backbone"),
        faulty(c("textures", "test_efficientnet", **vit), "no_zero_grad"),
        faulty(c("textures", "test_resnet"), "corrupt_huge"),
    ]
    for i, case in enumerate(out):
        case.seed = 400 + i
        case.extra = {"log_interval": (1, 5, 10)[i % 3], **case.extra}
        if case.schedule == "none":
            case.schedule = "step"  # timm has no "none": a step schedule whose first decay is past the end
            case.extra["decay_epochs"] = 10 * case.epochs
        if case.label in ("slow_loader", "corrupt_nan", "overfit"):
            case.extra["log_interval"] = 1
        case.norm = True
    return out
