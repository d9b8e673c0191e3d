"""Writer ``custom``: a hand-written PyTorch loop logging to TensorBoard under ad-hoc names.

Users name things as they please; four styles seen in the wild rotate over the runs:
``Loss/train`` + ``Accuracy/val`` (the PyTorch TensorBoard tutorial), ``training_loss`` +
``acc_val``, ``loss`` + ``val_loss`` (bare), ``loss_train`` + ``iou_val``. Each style logs what such
a loop typically logs: some a gradient norm, some a data time, some only a throughput; per-class
accuracy only where the user cares about a class (the rare-class runs, and a few others).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from corpus.world import loop, runio
from corpus.world.cases import Case, faulty, harmless, healthy

WRITER = "custom"

STYLES: dict[str, dict[str, Any]] = {
    "tutorial": {
        "fmt": "{Q}/{split}",
        "q": {"loss": "Loss", "acc": "Accuracy", "iou": "IoU", "pixel_error": "PixelError", "top5": "Top5"},
        "lr": "LR",
        "extra": {"data_time": "time/data", "step_time": "time/step"},
        "class": "Accuracy/val_{c}",
    },
    "snake": {
        "fmt": {"train": "training_{q}", "val": "{q}_val"},
        "q": {"acc": "acc", "iou": "miou", "pixel_error": "px_err"},
        "lr": "learning_rate",
        "extra": {"grad_norm": "grad_norm", "data_time": "data_time", "step_time": "batch_time"},
        "class": "acc_val_class_{c}",
    },
    "bare": {
        "fmt": {"train": "{q}", "val": "val_{q}"},
        "q": {},
        "lr": "lr",
        "extra": {"throughput": "samples_per_sec", "grad_norm": "gradients/total_norm"},
        "class": "val_acc/{c}",
    },
    "suffix": {
        "fmt": "{q}_{split}",
        "q": {"acc": "accuracy"},
        "lr": "lr/group0",
        "extra": {"data_time": "dataloader_ms", "step_time": "iter_ms"},
        "class": "class_{c}_acc_val",
    },
}
LOGGED_VAL = {"loss", "acc", "top5", "iou", "dice", "bce", "pixel_error"}
MS = {"dataloader_ms", "iter_ms"}


def name(style: dict[str, Any], split: str, q: str) -> str:
    fmt = style["fmt"] if isinstance(style["fmt"], str) else style["fmt"][split]
    renamed = style["q"].get(q, q)
    return fmt.format(Q=renamed, q=renamed, split=split)


def record(case: Case, work: Path) -> list[runio.Event]:
    style = STYLES[case.extra["style"]]
    every = case.extra.get("log_every", 1)
    per_class = case.extra.get("per_class", False)
    tb = SummaryWriter(str(work / "tb"))

    def on_step(step: int, epoch: int, n: dict[str, float]) -> None:
        if step % every:
            return
        for q in ("loss", "acc", "bce", "dice"):
            if q in n:
                tb.add_scalar(name(style, "train", q), n[q], step)
        tb.add_scalar(style["lr"], n["lr"], step)
        for q, tag in style["extra"].items():
            tb.add_scalar(tag, n[q] * (1000 if tag in MS else 1), step)

    def on_eval(step: int, epoch: int, n: dict[str, float]) -> None:
        for q, v in n.items():
            if q in LOGGED_VAL:
                tb.add_scalar(name(style, "val", q), v, step)
            elif q.startswith("acc_") and per_class:
                tb.add_scalar(style["class"].format(c=q.removeprefix("acc_")), v, step)
        tb.add_scalar("epoch", epoch, step)

    loop.run(case, on_step, on_eval)
    tb.close()
    return runio.from_logdir(work / "tb")


def cases() -> list[Case]:
    def c(dataset: str, model: str, **kw: Any) -> Case:
        return Case(WRITER, dataset, model, **kw)

    cls = [
        healthy(c("digits", "cnn"), "base"),
        healthy(c("digits", "mlp"), "dropout"),
        healthy(c("textures", "resnet"), "heavy_aug"),
        healthy(c("textures", "vit", width=24), "adamw"),
        healthy(c("textures", "cnn"), "mixup"),
        healthy(c("digits", "resnet"), "batch16"),
        healthy(c("shapes", "resnet"), "onecycle"),
        healthy(c("textures", "cnn"), "label_smoothing"),
        healthy(c("digits", "vit", width=24, optimizer="adam", lr=1e-3), "long"),
        healthy(c("textures", "cnn"), "batch256"),
        healthy(c("textures", "cnn"), "step_decay"),
        healthy(c("digits", "cnn"), "short"),
        faulty(c("digits", "cnn"), "lr_high"),
        faulty(c("textures", "vit", width=24, optimizer="adam", lr=1e-3), "lr_high"),
        faulty(c("textures", "resnet"), "lr_low"),
        faulty(c("digits", "cnn"), "no_zero_grad"),
        faulty(c("shapes", "resnet"), "no_zero_grad"),
        faulty(c("digits", "mlp"), "unshuffled"),
        faulty(c("textures", "cnn"), "unshuffled"),
        faulty(c("textures", "resnet"), "frozen_backbone"),
        faulty(c("digits", "mlp"), "unnormalised"),
        faulty(c("shapes", "cnn"), "label_noise"),
        faulty(c("digits", "cnn", extra={"per_class": True}), "rare_class"),
        faulty(c("textures", "resnet", extra={"per_class": True}), "rare_class"),
        faulty(c("digits", "cnn"), "slow_loader"),
        faulty(c("shapes", "mlp"), "slow_loader"),
        faulty(c("textures", "cnn"), "corrupt_nan"),
        faulty(c("digits", "resnet"), "corrupt_huge"),
        faulty(c("digits", "mlp"), "sigmoid_deep"),
        faulty(c("textures", "cnn"), "dying_relu"),
        faulty(c("textures", "cnn"), "tiny_model"),
        faulty(c("digits", "cnn"), "wrong_loss"),
        faulty(c("textures", "cnn"), "overfit"),
        faulty(c("digits", "mlp"), "exploding"),
    ]
    seg = c("seg", "unet", epochs=10, batch=16, optimizer="adam", lr=2e-3)
    kp = c("keypoints", "cnn", epochs=10, optimizer="adam", lr=2e-3)
    dense = [
        healthy(seg, "base"),
        healthy(seg, "onecycle"),
        healthy(c("seg", "unet", epochs=8, batch=16), "constant_lr"),
        healthy(seg, "batch16"),
        faulty(seg, "lr_high"),
        faulty(seg, "lr_low"),
        faulty(c("seg", "unet", epochs=8, batch=16), "no_zero_grad"),
        faulty(seg, "corrupt_nan"),
        faulty(seg, "slow_loader"),
        faulty(seg, "tiny_model"),
        harmless(faulty(seg, "unnormalised"), "Adam and the U-Net reached IoU 0.84 on raw 0..255 pixels"),
        healthy(kp, "base"),
        healthy(c("keypoints", "resnet", epochs=10, optimizer="adam", lr=2e-3), "step_decay"),
        healthy(kp, "long"),
        faulty(kp, "lr_high"),
        faulty(kp, "lr_low"),
        faulty(c("keypoints", "resnet", epochs=10, optimizer="adam", lr=2e-3), "frozen_backbone"),
        faulty(kp, "unnormalised"),
        faulty(kp, "no_zero_grad"),
        faulty(c("digits", "mlp"), "overfit"),
    ]
    out = cls + dense
    styles = list(STYLES)
    for i, case in enumerate(out):
        case.seed = i
        case.extra = {"style": styles[i % len(styles)], "log_every": (1, 1, 5)[i % 3], **case.extra}
        if case.label == "slow_loader" and "data_time" not in STYLES[case.extra["style"]]["extra"]:
            case.extra["style"] = "tutorial"  # a loop that times its data loading
    out[24].extra["style"] = "bare"  # one slow loader seen only in the throughput (digits: fast steps)
    return out
