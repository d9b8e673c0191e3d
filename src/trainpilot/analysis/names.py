"""What a metric is, from its name, whoever wrote it.

Runs arrive from TensorBoard logs written by other programs, so names vary: ``loss``, ``train/loss``,
``train_loss``, ``Loss/train``, ``train/epoch_loss`` and ``validation/epoch_loss`` (Keras),
``train_loss_step`` (Lightning), ``train/box_loss`` and ``lr/pg0`` (YOLO), ``loss_cls`` (mmdetection),
``eval/loss`` and ``train/learning_rate`` (Hugging Face), ``eval_top1`` (timm), ``Accuracy/val`` ...
A name is cut into words; the words for a split (train, val) and for bookkeeping (step, epoch, avg)
are set aside and what remains says the quantity. A loss with other words left (``box_loss``) is a
*component* of the total: the detectors that assume a cross-entropy leave it alone.

>>> role("Loss/train")[:2], role("val_acc")[:2], role("train_loss_step")[:2], role("lr/pg0")[:2]
(('train', 'loss'), ('val', 'acc'), ('train', 'loss'), (None, 'lr'))
>>> role("train/box_loss")
Role(split='train', quantity='loss', base='box_loss', component=True)
"""

from __future__ import annotations

import re
from typing import NamedTuple

TRAIN = {"train", "training", "tr"}
VAL = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}
BOOKKEEPING = {
    "step",
    "steps",
    "epoch",
    "epochs",
    "batch",
    "iter",
    "avg",
    "mean",
    "running",
    "smoothed",
    "metrics",
}
TOTAL = {"total", "overall", "global", "all", "sum"}
LOSS_WORDS = {"loss", "losses", "nll", "xent", "ce", "objective"}
NOT_LOSS = {"scale", "scaler", "weight", "weights", "coef", "coeff", "ratio", "lr", "rate", "multiplier"}
ACC_WORDS = {"acc", "accuracy", "top1", "acc1", "acc@1"}
ACC_QUALIFIERS = {"categorical", "sparse", "binary", "top1", "acc1", "multiclass"}
LR_WORDS = {"lr", "learningrate", "lr0"}
NOT_LR = {
    "momentum",
    "beta",
    "beta1",
    "beta2",
    "wd",
    "decay",
    "weight",
    "scale",
    "factor",
    "mult",
    "multiplier",
}
OPTIMISERS = {
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "lamb",
    "lion",
    "lars",
    "pg0",
    "pg1",
    "pg2",
    "group",
}
GRAD_WORDS = {"grad", "gradient", "grads", "gradients", "gradnorm"}
STEP_TIME = {("step", "time"), ("batch", "time"), ("iter", "time"), ("time", "per", "step"), ("time", "step")}
DATA_WORDS = {"data", "dataloader", "loader", "loading", "load", "fetch", "io"}
TIME_WORDS = {"time", "ms", "s", "sec", "secs", "seconds", "t", "wait", "latency", "duration"}
STEP_WORDS = {"step", "batch", "iter", "iteration", "forward", "train"}
THROUGHPUT = {"throughput", "samples", "images", "img", "examples", "it", "imgs", "tokens"}
_WORD = re.compile(r"[/._\-\s()\[\]:]+")


class Role(NamedTuple):
    split: str | None  # 'train', 'val' or None
    quantity: str | None  # loss | acc | lr | grad_norm | step_time | data_time | throughput | None
    base: str  # the name without its split and bookkeeping words: pairs val/box_loss with train/box_loss
    component: bool  # a part of the loss (box_loss, loss_cls), not the total


def words(name: str) -> list[str]:
    return [w for w in _WORD.split(name.lower()) if w]


def role(name: str) -> Role:
    """What the metric called `name` measures, and on which split."""
    all_words = words(name)
    split: str | None = None
    rest: list[str] = []
    for word in all_words:
        if word in TRAIN:
            split = "train"
        elif word in VAL:
            split = "val"
        elif word not in BOOKKEEPING:
            rest.append(word)
    base = "_".join(rest)
    quantity, component = _quantity(rest, all_words)
    return Role(split, quantity, base, component)


def _quantity(rest: list[str], all_words: list[str]) -> tuple[str | None, bool]:
    present = set(rest)
    if GRAD_WORDS & present:
        others = present - GRAD_WORDS - TOTAL - {"norm", "l2", "2"}
        normed = present & {"norm", "l2", "gradnorm"}
        return ("grad_norm" if normed and not others else None), False
    if LOSS_WORDS & present or {"cross", "entropy"} <= present:
        if NOT_LOSS & present:
            return None, False
        others = present - LOSS_WORDS - TOTAL - {"cross", "entropy"}
        return "loss", bool(others)
    if ACC_WORDS & present:
        others = present - ACC_WORDS - ACC_QUALIFIERS
        return ("acc" if not others else None), False
    if present & LR_WORDS or _has(rest, ("learning", "rate")):
        others = present - LR_WORDS - {"learning", "rate"} - OPTIMISERS
        return ("lr" if not (others & NOT_LR) and len(others) <= 1 else None), False
    timed = set(all_words) & TIME_WORDS
    if timed and set(all_words) & DATA_WORDS:
        return "data_time", False
    if any(_has(all_words, pattern) for pattern in STEP_TIME) or (
        timed and set(all_words) & STEP_WORDS and present <= STEP_WORDS | TIME_WORDS
    ):
        return "step_time", False
    if present & THROUGHPUT and (
        {"per", "s"} <= present or {"per", "sec"} <= present or "throughput" in present
    ):
        return "throughput", False
    if {"it", "s"} <= present or {"samples", "second"} <= present:
        return "throughput", False
    return None, False


def _has(seq: list[str], pattern: tuple[str, ...]) -> bool:
    n = len(pattern)
    return any(tuple(seq[i : i + n]) == pattern for i in range(len(seq) - n + 1))


CLASS_WORDS = {"class", "cls", "category", "label", "c", "per"}
NOT_A_CLASS = {
    "macro",
    "micro",
    "weighted",
    "balanced",
    "mean",
    "avg",
    "top",
    "top5",
    "top3",
    "all",
    "overall",
}


def per_class(name: str) -> str | None:
    """The class of a per-class validation accuracy (``val/acc/cat``, ``val_acc/3``, ``Accuracy/val/3``,
    ``val_acc_class_3``, ``recall/cls7``), else None. Training-split ones are not what lags."""
    original = [w for w in _WORD.split(name) if w]
    lower = [w.lower() for w in original]
    at = next((i for i, w in enumerate(lower) if w in ACC_WORDS or w == "recall"), None)
    if at is None or any(w in TRAIN for w in lower):
        return None
    named = next((i for i, w in enumerate(lower[:-1]) if w in {"class", "cls", "category"}), None)
    if named is not None and lower[named + 1] not in ACC_WORDS | VAL:
        return original[named + 1]
    rest = [
        original[i]
        for i in range(at + 1, len(lower))
        if lower[i] not in VAL | BOOKKEEPING | ACC_QUALIFIERS | CLASS_WORDS
    ]
    if len(rest) != 1 or rest[0].lower() in NOT_A_CLASS or lower[at + 1 : at + 2] == ["top"]:
        return None
    return rest[0]


# higher-is-better scores a validation metric may be, by the word that names it (``metrics/mAP50(B)``)
SCORE_WORDS = {
    "map": "map",
    "map50": "map",
    "miou": "miou",
    "iou": "iou",
    "f1": "f1",
    "auc": "auc",
    "ap": "ap",
}
SCORE_WORDS |= {"precision": "precision", "recall": "recall", "top1": "top1"}


def score_kind(name: str) -> str | None:
    """The kind of higher-is-better score a metric is (``metrics/mAP50(B)`` is a mAP), else None."""
    return next((SCORE_WORDS[w] for w in words(name) if w in SCORE_WORDS), None)


def time_scale(name: str) -> float:
    """Seconds per unit of a time metric: ``iter_ms`` is in milliseconds, ``data_time`` in seconds."""
    units = set(words(name))
    return 1e-3 if "ms" in units else 1e-6 if {"us", "µs"} & units else 1.0


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
