"""What every writer's training shares: the batch pipeline (with its healthy tricks and its faults),
the optimisers and the schedules, so a "mixup" or "slow loader" run is the same under every framework.

The pipeline is a `DataLoader` whose `Collate` counts the training batches it builds; that count is
the step, so the step-dependent faults (a slow loader from step s, a corrupted batch at step s) fire
at the same step whichever loop consumes the batches (our own, Lightning's, Hugging Face's).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from corpus.world.data import Data


class Pairs(Dataset[tuple[torch.Tensor, Any]]):
    def __init__(self, x: torch.Tensor, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        return self.x[i], self.y[i]


def augment(x: torch.Tensor, g: torch.Generator, heavy: bool) -> torch.Tensor:
    """Shift by up to 2 pixels; heavy adds noise and a cut-out square (it lowers train accuracy)."""
    _, _, h, w = x.shape
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 5, (2,), generator=g))
    x = pad[:, :, dy : dy + h, dx : dx + w]
    if heavy:
        x = x + 0.5 * torch.randn(x.shape, generator=g)
        cy, cx = (int(v) for v in torch.randint(0, h - h // 2 + 1, (2,), generator=g))
        x = x.clone()
        x[:, :, cy : cy + h // 2, cx : cx + w // 2] = 0
    return x


def mix(
    x: torch.Tensor, y: torch.Tensor, classes: int, kind: str, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix: mixed images and soft targets (cross-entropy takes probabilities)."""
    lam = (
        float(torch.distributions.Beta(1.0, 1.0).sample())
        if kind == "cutmix"
        else 0.6 + 0.4 * float(torch.rand(1, generator=g))
    )
    perm = torch.randperm(len(x), generator=g)
    soft = F.one_hot(y, classes).float()
    if kind == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        h = x.shape[-1]
        cut = int(h * math.sqrt(1 - lam))
        y0, x0 = (int(v) for v in torch.randint(0, h - cut + 1, (2,), generator=g))
        x = x.clone()
        x[:, :, y0 : y0 + cut, x0 : x0 + cut] = x[perm][:, :, y0 : y0 + cut, x0 : x0 + cut]
        lam = 1 - cut * cut / (h * h)
    return x, lam * soft + (1 - lam) * soft[perm]


class Collate:
    """Builds each training batch; counts them (the step) to apply the step-dependent faults.

    variant: ``aug``, ``heavy_aug``, ``mixup``, ``cutmix``; fault: ``slow_from``/``slow_s`` (a
    loader that falls behind from a step on), ``corrupt_step``/``corrupt_value`` (one batch with a
    NaN or a huge value), ``label_noise`` is applied to the data set itself (data.make).
    """

    def __init__(
        self, data: Data, variant: str, fault: dict[str, Any], seed: int, train: bool = True
    ) -> None:
        self.data, self.variant, self.fault, self.train = data, variant, fault, train
        self.g = torch.Generator().manual_seed(seed)
        self.step = 0
        self.data_time = 0.0  # seconds spent building the last batch: what a loop logs as data time

    def __call__(self, items: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
        started = time.perf_counter()
        x = torch.stack([i[0] for i in items])
        ys = [i[1] for i in items]
        y: Any = ys if self.data.task == "detection" else torch.stack(ys)
        if self.train:
            if self.fault.get("slow_s") and self.step >= self.fault.get("slow_from", 0):
                time.sleep(self.fault["slow_s"])
            if self.data.task == "classification" and self.variant in ("aug", "heavy_aug", "mixup", "cutmix"):
                x = augment(x, self.g, heavy=self.variant == "heavy_aug")
                if self.variant in ("mixup", "cutmix"):
                    x, y = mix(x, y, self.data.num_classes, self.variant, self.g)
            if self.step == self.fault.get("corrupt_step"):
                x = x.clone()
                x[: max(1, len(x) // 4)] = self.fault.get("corrupt_value", float("nan"))
            self.step += 1
        self.data_time = time.perf_counter() - started
        return x, y


def loaders(
    data: Data, batch: int, variant: str, fault: dict[str, Any], seed: int
) -> tuple[DataLoader[Any], DataLoader[Any], Collate]:
    """(train loader, val loader, the train Collate); class-sorted data is not shuffled (the fault)."""
    collate = Collate(data, variant, fault, seed)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(
        Pairs(data.train_x, data.train_y),
        batch_size=batch,
        shuffle=not fault.get("sorted"),
        generator=g,
        collate_fn=collate,
        drop_last=len(data.train_x) > 4 * batch,
    )
    val = DataLoader(
        Pairs(data.val_x, data.val_y),
        batch_size=256,
        collate_fn=Collate(data, "", {}, seed, train=False),
    )
    return train, val, collate


def optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "sgd_plain":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay or 0.01)
    raise ValueError(f"unknown optimizer {name!r}")


def schedule(name: str, opt: torch.optim.Optimizer, total: int, lr: float) -> Any:
    """cosine (with 5 % warm-up), onecycle, step (x0.1 at 50 % and 75 %), none."""
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total + 1)
    warm = max(1, total // 20)

    def factor(step: int) -> float:
        if name == "cosine":
            return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
        if name == "step":
            return 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))
        if name == "none":
            return 1.0
        raise ValueError(f"unknown schedule {name!r}")

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def grad_norm(model: torch.nn.Module) -> float:
    """The global L2 norm of the gradients (what clip_grad_norm_ returns, without clipping)."""
    grads = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0
