"""The corpus's data sets, all generated here or shipped with scikit-learn, and the data-side faults.

Every writer trains on these, so a fault means the same thing whichever framework records it:

- ``digits``: scikit-learn's 8x8 handwritten digits (10 classes), the only bundled data.
- ``shapes``: trainpilot's own generated grey shapes (6 classes, 16x16).
- ``textures``: 3-channel 16x16 colour textures (8 classes: stripes, checks, rings, dots ... each with
  a random tint, phase and noise), a second, harder classification set.
- ``seg``: 24x24 images of 1-3 shapes with their binary foreground mask (segmentation).
- ``keypoints``: 24x24 images of one shape; the target is its centre and the tip of a marker,
  as coordinates in [0, 1] (a well-trained model's MSE ends near 1e-3).
- ``detect``: 32x32 images with 1-3 objects of 3 classes, boxes as (cx, cy, w, h) in [0, 1].

`make(name, seed, fault)` returns a `Data` whose training part already carries the data-side
faults (label noise, a rare class, class-sorted order, raw 0-255 pixels, a tiny training set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corpus.world.cases import TASK as TASKS
from trainpilot.trainer.datasets import SHAPES, _shape_mask
from trainpilot.trainer.datasets import shapes as trainpilot_shapes

DETECT_CLASSES = ("circle", "square", "triangle")


@dataclass
class Data:
    """Tensors of one data set: x is N x C x H x W float; y depends on the task."""

    name: str
    task: str
    train_x: torch.Tensor
    train_y: Any
    val_x: torch.Tensor
    val_y: Any
    classes: list[str] = field(default_factory=list)
    # 1.0 = healthy; raw pixels (x255) when a pipeline forgot to normalise
    pixel_scale: float = 1.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def size(self) -> int:
        return int(self.train_x.shape[-1])


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (
        (d.images / 16.0).astype(np.float32)[:, None],
        d.target.astype(np.int64),
        [str(i) for i in range(10)],
    )


def _textures(count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = ["hstripe", "vstripe", "diag", "check", "rings", "dots", "blobs", "plain"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    labels = rng.integers(0, len(names), count)
    out = np.empty((count, 3, size, size), np.float32)
    for i, label in enumerate(labels):
        f = rng.uniform(2.5, 4.5)
        p = rng.uniform(0, 2 * math.pi)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        pattern = {
            0: np.sin(2 * math.pi * f * yy + p),
            1: np.sin(2 * math.pi * f * xx + p),
            2: np.sin(2 * math.pi * f * (xx + yy) / 1.4 + p),
            3: np.sign(np.sin(2 * math.pi * f * xx + p) * np.sin(2 * math.pi * f * yy + p)),
            4: np.sin(2 * math.pi * f * np.hypot(xx - cx, yy - cy) * 1.5 + p),
            5: (np.sin(2 * math.pi * f * xx + p) * np.sin(2 * math.pi * f * yy) > 0.6) * 2.0 - 1,
            6: np.tanh(3 * (np.sin(7 * xx + p) + np.cos(5 * yy + 2 * p))),
            7: np.zeros_like(xx),
        }[int(label)]
        tint = rng.uniform(0.2, 1.0, 3).astype(np.float32)
        base = rng.uniform(-0.3, 0.3, 3).astype(np.float32)
        img = base[:, None, None] + tint[:, None, None] * pattern[None] * 0.5
        out[i] = img + rng.normal(0, 0.35, img.shape).astype(np.float32)
    return out, labels.astype(np.int64), names


def _draw(u: np.ndarray, v: np.ndarray, name: str, s: float) -> np.ndarray:
    return _shape_mask(name, u, v, s).astype(np.float32)


def _seg(count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = np.empty((count, 1, size, size), np.float32)
    masks = np.zeros((count, 1, size, size), np.float32)
    for i in range(count):
        for _ in range(rng.integers(1, 4)):
            s = rng.uniform(0.1, 0.22)
            cx, cy = rng.uniform(s, 1 - s, 2)
            masks[i, 0] = np.maximum(masks[i, 0], _draw(xx - cx, yy - cy, SHAPES[rng.integers(0, 6)], s))
        x[i, 0] = masks[i, 0] * rng.uniform(0.5, 1.0) + rng.normal(0, 0.3, (size, size))
    return x, masks


def _keypoints(count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ring with a marker dot beside it: targets are the ring's centre and the marker, in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = np.empty((count, 1, size, size), np.float32)
    y = np.empty((count, 4), np.float32)
    for i in range(count):
        s = rng.uniform(0.12, 0.16)
        cx, cy = rng.uniform(0.32, 0.68, 2)
        a = rng.uniform(0, 2 * math.pi)
        mx, my = cx + 1.5 * s * math.cos(a), cy + 1.5 * s * math.sin(a)
        img = _draw(xx - cx, yy - cy, "ring", s) + 1.5 * (np.hypot(xx - mx, yy - my) < 0.07)
        x[i, 0] = img + rng.normal(0, 0.2, (size, size))
        y[i] = (cx, cy, mx, my)
    return x, y


def _detect(count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images and, per image, an array of rows (class, cx, cy, w, h)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = np.empty((count, 3, size, size), np.float32)
    targets: list[np.ndarray] = []
    colours = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.4, 1.0]], np.float32)
    for i in range(count):
        img = rng.normal(0, 0.15, (3, size, size)).astype(np.float32)
        rows = []
        for _ in range(rng.integers(1, 4)):
            c = int(rng.integers(0, 3))
            s = rng.uniform(0.09, 0.17)
            cx, cy = rng.uniform(s, 1 - s, 2)
            m = _draw(xx - cx, yy - cy, DETECT_CLASSES[c], s)
            img += m[None] * (colours[c] * rng.uniform(0.6, 1.0))[:, None, None]
            ys, xs = np.nonzero(m)
            if len(xs):
                x0, x1, y0, y1 = (
                    xs.min() / size,
                    (xs.max() + 1) / size,
                    ys.min() / size,
                    (ys.max() + 1) / size,
                )
                rows.append((c, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
        x[i] = img
        targets.append(np.array(rows, np.float32).reshape(-1, 5))
    return x, targets


def _normalise(tx: np.ndarray, vx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = tx.mean(axis=(0, 2, 3), keepdims=True)
    std = tx.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return (tx - mean) / std, (vx - mean) / std


def make(name: str, seed: int, fault: dict[str, Any] | None = None, count: int | None = None) -> Data:
    """Data set `name` for `seed`, with the data-side faults of `fault` applied to its training part.

    fault keys: ``label_noise`` (fraction), ``rare_class`` (keep this fraction of class 0),
    ``sorted`` (train set ordered by class), ``unnormalised`` (raw 0..255 pixels), ``train_count``.
    """
    fault = fault or {}
    rng = np.random.default_rng(1000 + seed)
    classes: list[str] = []
    y: Any
    if name == "digits":
        x, y, classes = _digits()
    elif name == "shapes":
        x, y, classes = trainpilot_shapes(count or 1500, 16, 6, 0.2, seed)
    elif name == "textures":
        x, y, classes = _textures(count or 1500, 16, rng)
    elif name == "seg":
        x, y = _seg(count or 700, 24, rng)
    elif name == "keypoints":
        x, y = _keypoints(count or 1200, 24, rng)
    elif name == "detect":
        x, y = _detect(count or 600, 32, rng)
        classes = list(DETECT_CLASSES)
    else:
        raise ValueError(f"unknown data set {name!r}: use one of {sorted(TASKS)}")
    order = np.random.default_rng(seed + 1).permutation(len(x))
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    if "train_count" in fault:
        train = train[: fault["train_count"]]
    pick = (lambda idx: [y[i] for i in idx]) if isinstance(y, list) else (lambda idx: y[idx])
    ty, vy = pick(train), pick(val)
    tx, vx = x[train], x[val]
    task = TASKS[name]
    if task == "classification":
        ty = ty.copy()
        if "rare_class" in fault:  # keep only a few examples of class 0
            zero = np.nonzero(ty == 0)[0]
            drop = zero[int(len(zero) * fault["rare_class"]) :]
            keep = np.setdiff1d(np.arange(len(ty)), drop)
            tx, ty = tx[keep], ty[keep]
        if fault.get("label_noise"):
            flip = rng.random(len(ty)) < fault["label_noise"]
            ty[flip] = rng.integers(0, len(classes), int(flip.sum()))
        if fault.get("sorted"):  # a pipeline that reads one class folder after another, unshuffled
            by_class = np.argsort(ty, kind="stable")
            tx, ty = tx[by_class], ty[by_class]
    scale = 1.0
    if fault.get("unnormalised"):
        lo, hi = tx.min(), tx.max()
        tx, vx = (tx - lo) / (hi - lo) * 255, (vx - lo) / (hi - lo) * 255
        scale = 255.0
    elif task != "detection":
        tx, vx = _normalise(tx, vx)
    as_t = torch.from_numpy
    if task == "detection":
        ty_out: Any = [as_t(t) for t in ty]
        vy_out: Any = [as_t(t) for t in vy]
    else:
        ty_out, vy_out = as_t(np.ascontiguousarray(ty)), as_t(np.ascontiguousarray(vy))
    return Data(
        name,
        task,
        as_t(np.ascontiguousarray(tx, np.float32)),
        ty_out,
        as_t(np.ascontiguousarray(vx, np.float32)),
        vy_out,
        classes,
        scale,
    )
