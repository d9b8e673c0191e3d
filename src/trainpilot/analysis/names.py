"""What a metric is, from its name, whoever wrote it.

Runs arrive from TensorBoard logs written by other programs, so names vary: ``loss``, ``train/loss``,
``train_loss``, ``Loss/train``, ``training_loss``, ``train/epoch_loss`` (Keras), ``val_loss``,
``validation/epoch_loss``, ``eval/loss``, ``Accuracy/val`` ... `role` maps a name to (split, quantity).

>>> role("Loss/train"), role("val_acc"), role("validation/epoch_loss"), role("lr")
(('train', 'loss'), ('val', 'acc'), ('val', 'loss'), (None, 'lr'))
"""

from __future__ import annotations

import re

TRAIN = {"train", "training", "tr"}
VAL = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}
QUANTITIES = {
    "loss": {"loss", "epoch_loss", "batch_loss", "total_loss", "nll", "ce", "cross_entropy", "xent"},
    "acc": {
        "acc",
        "accuracy",
        "epoch_accuracy",
        "batch_accuracy",
        "epoch_acc",
        "top1",
        "acc1",
        "top1_acc",
        "categorical_accuracy",
        "sparse_categorical_accuracy",
    },
    "lr": {"lr", "learning_rate", "learningrate", "lr0", "lr_pg0", "lr-sgd", "lr-adam", "lr-adamw"},
    "grad_norm": {"grad_norm", "gradient_norm", "grad_norm_total", "global_grad_norm", "grad_l2", "gradnorm"},
    "step_time": {"step_time", "step_time_s", "batch_time", "iter_time", "time_per_step", "data_time"},
    "throughput": {
        "images_per_s",
        "samples_per_sec",
        "samples_per_second",
        "throughput",
        "img_per_s",
        "examples_per_sec",
        "it_per_s",
    },
}
_SPLIT = re.compile(r"[/._\-\s]+")


def role(name: str) -> tuple[str | None, str | None]:
    """(split, quantity): split is 'train', 'val' or None; quantity one of QUANTITIES' keys or None."""
    lower = name.lower()
    parts = [p for p in lower.split("/") if p]
    split: str | None = None
    rest: list[str] = []
    for part in parts:
        if part in TRAIN:
            split = "train"
        elif part in VAL:
            split = "val"
        else:
            rest.append(part)
    leaf = "/".join(rest) if rest else lower
    for quantity, names in QUANTITIES.items():
        if leaf in names:
            return split, quantity
    tokens = _SPLIT.split(leaf)
    for i, token in enumerate(tokens):
        if token in TRAIN or token in VAL:
            remainder = "_".join(tokens[:i] + tokens[i + 1 :])
            for quantity, names in QUANTITIES.items():
                if remainder in names:
                    return ("train" if token in TRAIN else "val"), quantity
    return split, None


def grad_layer(name: str) -> str | None:
    """'first' or 'last' for first- and last-layer gradient norms (``grad_norm/first_layer``)."""
    lower = name.lower()
    if "grad" not in lower:
        return None
    if "first" in lower:
        return "first"
    if "last" in lower:
        return "last"
    return None
