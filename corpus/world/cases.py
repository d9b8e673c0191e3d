"""What a run is (`Case`), the faults it may carry (`FAULTS`) and the healthy tricks (`HEALTHY`).

A case is the training settings of one run plus its label. Faults are real bugs applied to those
settings (a learning rate 100x too high, a forgotten ``optimizer.zero_grad()``, a data set read one
class folder after another ...); each lists the detector kinds that a user would accept as the right
diagnosis. Writers pick their cases with `healthy` and `faulty`; `check.py` then confirms from each
recorded run's own numbers that its label is true.

``unshuffled_data`` in an expect list is a kind the detectors do not have yet: class-sorted data is
its own bug, and its honest symptoms (spikes at each class boundary, a validation accuracy near
chance) are listed beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TRAIN_SIZE = {"digits": 1438, "shapes": 1200, "textures": 1200, "seg": 560, "keypoints": 960, "detect": 480}
TASK = {
    "digits": "classification",
    "shapes": "classification",
    "textures": "classification",
    "seg": "segmentation",
    "keypoints": "keypoints",
    "detect": "detection",
}

DIVERGE = ["divergence", "lr_too_high", "nan_inf", "exploding_gradient", "loss_spike", "oscillation"]
NO_PROGRESS = ["lr_too_low", "plateau", "underfitting", "stuck_at_chance"]


@dataclass(frozen=True)
class Fault:
    expect: list[str]
    settings: dict[str, Any]  # Case fields to override
    fault: dict[str, Any] = field(default_factory=dict)  # the data/model/step faults (data, nets, pipeline)
    onset_fraction: float = 0.0  # where in the run the fault begins (slow loader, corrupted batch)


FAULTS: dict[str, Fault] = {
    "lr_high": Fault([*DIVERGE, "bad_initial_loss", "stuck_at_chance"], {"lr_scale": 200.0, "clip": 0.0}),
    "lr_low": Fault(NO_PROGRESS, {"lr_scale": 1e-4, "schedule": "none"}),
    "no_zero_grad": Fault([*DIVERGE, "stuck_at_chance", "plateau"], {}, {"no_zero_grad": True}),
    "unshuffled": Fault(
        ["unshuffled_data", "oscillation", "loss_spike", "stuck_at_chance", "underfitting"],
        {},
        {"sorted": True},
    ),
    # a model that cannot learn and stays at chance is, to its user, stuck at chance: both are right
    "frozen_backbone": Fault(
        ["underfitting", "plateau", "lr_too_low", "stuck_at_chance"], {}, {"frozen_backbone": True}
    ),
    "unnormalised": Fault(
        [*DIVERGE, "bad_initial_loss", "stuck_at_chance", "underfitting", "plateau"],
        {"norm": False},
        {"unnormalised": True},
    ),
    "label_noise": Fault(["noisy_labels", "underfitting", "overfitting"], {}, {"label_noise": 0.5}),
    "rare_class": Fault(["class_weakness"], {}, {"rare_class": 0.03}),
    "slow_loader": Fault(["input_bottleneck"], {}, {"slow_s": 0.08}, onset_fraction=0.4),
    "corrupt_nan": Fault(["nan_inf", "divergence", "loss_spike"], {}, {"corrupt_value": float("nan")}, 0.5),
    "corrupt_huge": Fault(
        ["loss_spike", "nan_inf", "divergence", "exploding_gradient", "oscillation"],
        {"clip": 0.0},
        {"corrupt_value": 1e4},
        0.5,
    ),
    "sigmoid_deep": Fault(
        ["vanishing_gradient", "stuck_at_chance", "plateau", "lr_too_low", "underfitting"],
        {"act": "sigmoid", "depth": 8, "norm": False, "model": "mlp", "schedule": "none"},
    ),
    "dying_relu": Fault(
        ["dying_relu", "vanishing_gradient", "stuck_at_chance", "plateau", "lr_too_low"],
        {"norm": False},
        {"dead_bias": -8.0},
    ),
    "tiny_model": Fault(["underfitting", "plateau", "stuck_at_chance"], {"width": 1, "depth": 1}),
    "wrong_loss": Fault(["underfitting", "plateau", "stuck_at_chance"], {}, {"wrong_loss": True}),
    "overfit": Fault(
        ["overfitting"],
        # a wide MLP on 40 images: conv nets with batch norm generalise too well on these data sets
        {
            "epochs_scale": 8.0,
            "batch": 16,
            "dropout": 0.0,
            "aug": "",
            "weight_decay": 0.0,
            "schedule": "none",
            "model": "mlp",
            "width": 32,
            "norm": True,
        },
        {"train_count": 40},
    ),
    "exploding": Fault(
        ["exploding_gradient", "divergence", "nan_inf", "loss_spike", "oscillation", "lr_too_high"],
        {"norm": False, "depth": 6, "model": "mlp", "clip": 0.0, "lr_scale": 4.0},
        {"init_scale": 2.5},
    ),
}

# healthy variants chosen to fool detectors: each is a Case override
HEALTHY: dict[str, dict[str, Any]] = {
    "base": {},
    "dropout": {"dropout": 0.5},
    "label_smoothing": {"label_smoothing": 0.2},
    "mixup": {"aug": "mixup"},
    "cutmix": {"aug": "cutmix"},
    "aug": {"aug": "aug"},
    "heavy_aug": {"aug": "heavy_aug"},
    "weight_decay": {"weight_decay": 5e-3},
    "clip": {"clip": 1.0},
    "adam": {"optimizer": "adam", "lr": 1e-3},
    "adamw": {"optimizer": "adamw", "lr": 2e-3},
    "onecycle": {"schedule": "onecycle"},
    "step_decay": {"schedule": "step"},
    "constant_lr": {"schedule": "none"},
    "batch16": {"batch": 16, "lr_scale": 0.5},
    "batch256": {"batch": 256, "lr_scale": 2.0, "epochs_scale": 3.0},
    "long": {"epochs_scale": 3.0},
    "short": {"epochs_scale": 0.34},
}


@dataclass
class Case:
    writer: str
    dataset: str
    model: str
    label: str = "healthy"
    variant: str = "base"
    seed: int = 0
    epochs: int = 10
    batch: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    dropout: float = 0.0
    label_smoothing: float = 0.0
    clip: float = 0.0
    width: int = 16
    depth: int = 2
    act: str = "relu"
    norm: bool = True
    aug: str = ""
    fault: dict[str, Any] = field(default_factory=dict)
    expect: list[str] = field(default_factory=list)
    onset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # writer-specific (naming style, logger ...)

    @property
    def task(self) -> str:
        return TASK[self.dataset]

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model}-{self.label}-{self.variant}-s{self.seed}"

    @property
    def steps_per_epoch(self) -> int:
        n = self.fault.get("train_count", TRAIN_SIZE[self.dataset])
        return n // self.batch if n > 4 * self.batch else -(-n // self.batch)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def config(self) -> dict[str, Any]:
        """The hyperparameters as a user would log them (not the injected fault's internals)."""
        out = {
            "lr": self.lr,
            "optimizer": self.optimizer,
            "batch_size": self.batch,
            "epochs": self.epochs,
            "scheduler": self.schedule,
            "weight_decay": self.weight_decay,
        }
        if self.task in ("classification", "detection"):
            out["num_classes"] = {"digits": 10, "shapes": 6, "textures": 8, "detect": 3}[self.dataset]
        for key in ("dropout", "label_smoothing", "clip"):
            if getattr(self, key):
                out["grad_clip" if key == "clip" else key] = getattr(self, key)
        if self.aug:
            out["augmentation"] = self.aug
        return out


def _scaled(case: Case, over: dict[str, Any]) -> Case:
    over = dict(over)
    lr_scale = over.pop("lr_scale", 1.0)
    epochs_scale = over.pop("epochs_scale", 1.0)
    case = dataclasses.replace(case, **over)
    return dataclasses.replace(case, lr=case.lr * lr_scale, epochs=max(1, round(case.epochs * epochs_scale)))


def healthy(base: Case, variant: str) -> Case:
    """`base` with the healthy trick `variant` (a name not in HEALTHY: base already carries it)."""
    return dataclasses.replace(_scaled(base, HEALTHY.get(variant, {})), variant=variant, label="healthy")


def harmless(case: Case, reason: str) -> Case:
    """A fault that was recorded and did not manifest: kept, but labelled healthy, with the reason."""
    return dataclasses.replace(
        case,
        label="healthy",
        expect=[],
        variant=f"{case.label}_harmless",
        extra={**case.extra, "note": f"recorded as {case.label}; relabelled healthy: {reason}"},
    )


def faulty(base: Case, fault: str, variant: str = "", **override: Any) -> Case:
    """`base` with fault `fault` applied (settings, then `override`), its expect list and onset."""
    spec = FAULTS[fault]
    settings = dict(spec.settings)
    if fault == "lr_high" and base.optimizer not in ("sgd", "sgd_plain"):
        settings["lr_scale"] = 1000.0  # Adam-like optimisers survive 200x: a far too high lr is 1.0 for them
    case = _scaled(base, {**settings, **override})
    case = dataclasses.replace(
        case,
        label=fault,
        variant=variant or case.variant,
        fault={**spec.fault, **case.fault},
        expect=list(spec.expect),
    )
    onset = int(case.total_steps * spec.onset_fraction)
    if "slow_s" in case.fault:
        case.fault["slow_from"] = onset
    if "corrupt_value" in case.fault:
        case.fault["corrupt_step"] = onset
    case.onset = onset
    return case
