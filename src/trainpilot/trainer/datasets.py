"""Image data for the reference trainer, all offline: digits, generated shapes, or a folder.

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 10 classes), shipped with the package.
- ``shapes``: images drawn here (circle, square, triangle, cross, ring, ...), deterministic by
  seed, with size, count, class count and difficulty (noise, jitter, clutter) configurable: larger
  images for throughput, harder ones for longer curves.
- ``folder:PATH``: any ``PATH/<class>/<image>`` tree (Pillow reads it), for your own data.

Every loader returns a `Split` of float tensors, normalised per channel with statistics of the
training part only (or, with ``normalize=False``, raw pixel values 0..255).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from trainpilot.extras import extra

with extra("train", "trainpilot train"):
    import numpy as np
    import torch

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "hbar", "vbar", "x", "dot")


@dataclass
class Split:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


def load(
    spec: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    image_size: int = 32,
    count: int = 2000,
    num_classes: int = 6,
    difficulty: float = 0.3,
    normalize: bool = True,
) -> Split:
    """The data set named by `spec`: ``digits``, ``shapes`` or ``folder:PATH``."""
    if spec == "digits":
        x, y, classes = _digits()
    elif spec == "shapes":
        x, y, classes = shapes(count, image_size, num_classes, difficulty, seed)
    elif spec.startswith("folder:"):
        x, y, classes = _folder(Path(spec.removeprefix("folder:")), image_size)
    else:
        raise ValueError(f"unknown data set {spec!r}: use digits, shapes or folder:PATH")
    return _split(x, y, classes, seed, val_fraction, normalize)


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    with extra("train", "the digits data set"):
        from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return x, digits.target.astype(np.int64), [str(i) for i in range(10)]


def shapes(
    count: int, size: int, num_classes: int, difficulty: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`count` grey images of `num_classes` shapes; difficulty in [0, 1] adds noise, jitter and clutter."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"shapes has 2 to {len(SHAPES)} classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    labels = rng.integers(0, num_classes, count)
    images = np.empty((count, 1, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        scale = rng.uniform(0.18, 0.32) * (1 - 0.4 * difficulty * rng.random())
        cx, cy = rng.uniform(0.5 - 0.25 * (1 + difficulty), 0.5 + 0.25 * (1 + difficulty), 2).clip(
            scale, 1 - scale
        )
        angle = rng.uniform(-math.pi, math.pi) * difficulty
        dx, dy = xx - cx, yy - cy
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        mask = _shape_mask(SHAPES[label], u, v, scale)
        image = mask.astype(np.float32) * rng.uniform(0.6, 1.0)
        image += rng.normal(0, 0.05 + 0.35 * difficulty, image.shape).astype(np.float32)
        if difficulty > 0 and rng.random() < difficulty:  # clutter: a stray blob elsewhere
            bx, by = rng.uniform(0, 1, 2)
            image += 0.5 * (((xx - bx) ** 2 + (yy - by) ** 2) < (0.05 * size / size) ** 2)
        images[i, 0] = image
    return images.clip(-1, 2), labels.astype(np.int64), list(SHAPES[:num_classes])


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    r = np.sqrt(u**2 + v**2)
    t = s * 0.3
    masks = {
        "circle": r < s,
        "square": (abs(u) < s * 0.85) & (abs(v) < s * 0.85),
        "triangle": (v < s * 0.7) & (v > -s * 0.9 + 1.8 * abs(u)),
        "cross": ((abs(u) < t) & (abs(v) < s)) | ((abs(v) < t) & (abs(u) < s)),
        "ring": (r < s) & (r > s * 0.6),
        "diamond": abs(u) + abs(v) < s,
        "hbar": (abs(u) < s) & (abs(v) < t),
        "vbar": (abs(v) < s) & (abs(u) < t),
        "x": ((abs(u - v) < t) | (abs(u + v) < t)) & (r < s),
        "dot": r < s * 0.35,
    }
    mask: np.ndarray = masks[name]
    return mask


def _folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with extra("train", "a folder: data set"):
        from PIL import Image

    if not root.is_dir():
        raise ValueError(f"{root} is not a directory of class folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{root} needs at least two class folders, found {classes}")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            try:
                with Image.open(path) as img:
                    rgb = img.convert("RGB").resize((size, size))
            except OSError:
                continue  # not an image
            xs.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            ys.append(label)
    if not xs:
        raise ValueError(f"no readable images under {root}")
    return np.stack(xs), np.array(ys, dtype=np.int64), classes


def _split(
    x: np.ndarray, y: np.ndarray, classes: list[str], seed: int, val_fraction: float, normalize: bool
) -> Split:
    order = np.random.default_rng(seed + 1).permutation(len(x))
    n_val = max(1, int(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    # standard strides even for one channel (numpy's new axis gives stride 1): otherwise the conv's
    # weight gradients come out channels-last and DistributedDataParallel warns on every step
    tx, vx = (torch.from_numpy(x[i]).clone(memory_format=torch.contiguous_format) for i in (train, val))
    if normalize:
        mean = tx.mean(dim=(0, 2, 3), keepdim=True)
        std = tx.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        tx, vx = (tx - mean) / std, (vx - mean) / std
    else:  # raw pixel values, as a pipeline that forgot to normalise feeds them
        tx, vx = tx * 255, vx * 255
    return Split(tx, torch.from_numpy(y[train]), vx, torch.from_numpy(y[val]), classes)
