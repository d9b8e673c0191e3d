"""Writer ``yolo``: a YOLO-style detection loop logging YOLOv5's names, once per epoch as YOLOv5 does.

YOLOv5's ``train.py`` writes ``results.csv`` and TensorBoard per epoch: ``train/box_loss``,
``train/obj_loss``, ``train/cls_loss`` (epoch means), ``metrics/precision``, ``metrics/recall``,
``metrics/mAP_0.5``, ``metrics/mAP_0.5:0.95``, ``val/box_loss``, ``val/obj_loss``,
``val/cls_loss``, and ``x/lr0``..``x/lr2`` for its three parameter groups (batch-norm weights
without decay, other weights with decay, biases, whose lr warms down from 0.1 as in YOLOv5).
The model is a grid detector (box, objectness, class per cell) on a CNN or ResNet backbone, on
generated images of 1-3 objects; the loss is the same three parts. Real Ultralytics is the
``ultralytics`` writer.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from corpus.world import loop, runio
from corpus.world.cases import Case, faulty, healthy

WRITER = "yolo"
PARTS = {"box": "box_loss", "obj": "obj_loss", "cls": "cls_loss"}


class Warmup:
    """YOLOv5's schedule: linear warm-up over ``warmup`` updates (bias lr from 0.1 down, the others
    from 0 up), then cosine (or linear) to ``lrf`` x lr per epoch."""

    def __init__(self, opt: torch.optim.Optimizer, case: Case, per_epoch: int) -> None:
        self.opt, self.case, self.per_epoch = opt, case, per_epoch
        self.warmup = max(3 * per_epoch, 30) if case.extra.get("warmup", True) else 0
        self.step_update(0)

    def factor(self, epoch: float) -> float:
        lrf, e = 0.01, self.case.epochs
        if self.case.schedule == "cosine":
            return ((1 - math.cos(epoch * math.pi / e)) / 2) * (lrf - 1) + 1
        if self.case.schedule == "none":
            return 1.0
        return (1 - epoch / e) * (1.0 - lrf) + lrf

    def step_update(self, n: int) -> None:
        f = self.factor(n // self.per_epoch) * self.case.lr
        for i, group in enumerate(self.opt.param_groups):
            if n < self.warmup:
                start = 0.1 if i == 2 else 0.0
                group["lr"] = start + (f - start) * n / self.warmup
            else:
                group["lr"] = f


def groups(model: nn.Module, case: Case) -> tuple[torch.optim.Optimizer, None]:
    g_bn, g_w, g_b = [], [], []
    for m in model.modules():
        if hasattr(m, "bias") and isinstance(m.bias, nn.Parameter) and m.bias.requires_grad:
            g_b.append(m.bias)
        if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad:
            g_bn.append(m.weight)
        elif hasattr(m, "weight") and isinstance(m.weight, nn.Parameter) and m.weight.requires_grad:
            g_w.append(m.weight)
    found = [(g, wd) for g, wd in ((g_bn, 0.0), (g_w, case.weight_decay), (g_b, 0.0)) if g]  # frozen: fewer
    first, rest = found[0], found[1:]
    if case.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(first[0], lr=case.lr, momentum=0.937, nesterov=True)
    else:
        opt = torch.optim.Adam(first[0], lr=case.lr, betas=(0.937, 0.999))
    for g, wd in rest:
        opt.add_param_group({"params": g, "weight_decay": wd})
    return opt, None


def record(case: Case, work: Path) -> list[runio.Event]:
    events: list[runio.Event] = []
    sums: dict[str, float] = {}
    count = [0]
    opt_holder: dict[str, Any] = {}

    def framework(model: nn.Module, per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        opt, _ = groups(model, case)
        opt_holder["opt"] = opt
        return opt, Warmup(opt, case, per_epoch)

    def on_step(step: int, epoch: int, n: dict[str, float]) -> None:
        for k in PARTS:
            sums[k] = sums.get(k, 0.0) + n[k]
        count[0] += 1

    def on_eval(step: int, epoch: int, m: dict[str, float]) -> None:
        row = {f"train/{v}": sums.get(k, math.nan) / max(1, count[0]) for k, v in PARTS.items()}
        row.update(
            {
                "metrics/precision": m["precision"],
                "metrics/recall": m["recall"],
                "metrics/mAP_0.5": m["map50"],
                "metrics/mAP_0.5:0.95": m["map"],
            }
        )
        row.update({f"val/{v}": m[k] for k, v in PARTS.items()})
        lrs = opt_holder["opt"].param_groups
        row.update({f"x/lr{i}": g["lr"] for i, g in enumerate(lrs)})
        events.append({"kind": "metrics", "step": epoch, "ts": time.time(), "data": row})
        sums.clear()
        count[0] = 0

    loop.run(case, on_step, on_eval, framework=framework)
    return runio.merge(events)


def cases() -> list[Case]:
    def c(model: str, **kw: Any) -> Case:
        base = {"optimizer": "sgd", "lr": 0.01, "schedule": "linear", "epochs": 10, "weight_decay": 5e-4}
        return Case(WRITER, "detect", model, **{**base, **kw})

    out = [
        healthy(c("cnn"), "base"),
        healthy(c("resnet"), "base"),
        healthy(c("cnn", schedule="cosine"), "cosine"),
        healthy(c("cnn", optimizer="adam", lr=1e-3), "adam"),
        healthy(c("cnn"), "batch16"),
        healthy(c("resnet", extra={"warmup": False}), "no_warmup"),
        faulty(c("cnn"), "lr_high"),
        faulty(c("resnet", optimizer="adam", lr=1e-3), "lr_high"),
        faulty(c("cnn"), "lr_low"),
        faulty(c("resnet"), "no_zero_grad"),
        faulty(c("cnn"), "corrupt_nan"),
        faulty(c("cnn", norm=False), "unnormalised"),
        faulty(c("cnn"), "tiny_model"),
        faulty(c("resnet"), "frozen_backbone"),
        faulty(c("cnn"), "corrupt_huge"),
    ]
    for i, case in enumerate(out):
        case.seed = 600 + i
        if case.schedule == "step":
            case.schedule = "linear"
        if case.fault.get("corrupt_step") is not None:  # the corrupted batch shows in its epoch's means
            case.onset = case.fault["corrupt_step"] // case.steps_per_epoch
    return out
