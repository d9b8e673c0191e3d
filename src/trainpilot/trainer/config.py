"""The reference trainer's settings, and their flags and config files, without importing torch.

`trainpilot --help` must stay fast, so the CLI builds the trainer's flags from this module and
imports `trainpilot.trainer.train` (and torch) only when it trains.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    data: str = "digits"
    model: str = "cnn"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # cosine | step | none
    warmup_steps: int = 20
    augment: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    image_size: int = 32
    count: int = 2000
    classes: int = 6
    difficulty: float = 0.3
    activation: str = "relu"
    depth: int = 2
    width: int | None = None
    init_scale: float = 1.0  # multiplies initial weights: 0.01 or 10 for bad-initialisation runs
    label_noise: float = 0.0  # fraction of training labels replaced at random
    train_fraction: float = 1.0  # use only this fraction of the training set (tiny-data runs)
    normalize: bool = True  # off: raw pixel values (0..255), as a pipeline that forgot to normalise gives
    batch_norm: bool = True
    loader_delay: float = (
        0.0  # seconds of sleep per batch from a third of the run on: a pipeline falling behind
    )
    eval_every: int = 0  # steps between validations; 0 = once per epoch
    checkpoint_dir: str = "checkpoints"
    tensorboard_dir: str | None = "runs"
    resume: str | None = None
    system_every_s: float = 5.0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def add_flags(parser: Any) -> None:
    """One flag per TrainConfig field (``--batch-size``, ``--augment/--no-augment``, ...)."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {default})"
            )
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=None, help=f"(default {default})")
    parser.add_argument("--config", help="a TOML or YAML file of these settings; flags win")


def config_from(args: Any, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the config file, then the flags that were given."""
    values: dict[str, Any] = dict(defaults or {})
    if getattr(args, "config", None):
        values.update(read_config(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown and getattr(args, "config", None):
        raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
    values.update({n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
    return TrainConfig(**values)


def read_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        loaded = yaml.safe_load(text) or {}
    else:
        import tomllib

        loaded = tomllib.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a table of settings")
    return {k.replace("-", "_"): v for k, v in loaded.items()}
