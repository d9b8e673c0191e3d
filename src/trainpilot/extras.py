"""Optional dependencies, and the one line a user gets when one is missing instead of a traceback.

    with extra("train", "trainpilot train"):
        import torch

raises `MissingExtra("trainpilot train needs PyTorch: pip install 'trainpilot[train]'")` where torch
is not installed. The extras in pyproject.toml match features, not packages:

    train     the reference trainer and the drop-in SummaryWriter (torch, numpy, pillow, scikit-learn,
              tensorboard, tqdm)
    vision    torchvision's models in the trainer (``--model tv:resnet18``)
    images    `Run.log_image` of arrays and PIL images (numpy, pillow); PNG/JPEG bytes need nothing
    postgres  the PostgreSQL store (psycopg)
    redis     the Redis broker, for several server replicas (redis)
    lightning    trainpilot.integrations.lightning (lightning)
    huggingface  trainpilot.integrations.huggingface (transformers, accelerate)
    ultralytics  trainpilot.integrations.ultralytics (ultralytics; it needs torchvision)
    keras        trainpilot.integrations.keras (keras 3, on the torch backend)

Reading TensorBoard files (`trainpilot watch`, `trainpilot analyze`) needs no extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

from trainpilot.exceptions import MissingExtra

# What the message calls a top-level module.
NAMES = {
    "PIL": "Pillow",
    "accelerate": "Accelerate",
    "keras": "Keras 3",
    "lightning": "PyTorch Lightning",
    "transformers": "Hugging Face Transformers",
    "ultralytics": "Ultralytics",
    "numpy": "NumPy",
    "psycopg": "psycopg",
    "psycopg_pool": "psycopg_pool",
    "redis": "redis-py",
    "sklearn": "scikit-learn",
    "tensorboard": "TensorBoard",
    "torch": "PyTorch",
    "torchvision": "torchvision",
    "tqdm": "tqdm",
}


def missing(name: str, feature: str, what: str) -> MissingExtra:
    return MissingExtra(f"{feature} needs {what}: pip install 'trainpilot[{name}]'", extra=name)


@contextmanager
def extra(name: str, feature: str) -> Iterator[None]:
    """Imports in this block belong to extra `name`, which `feature` needs."""
    try:
        yield
    except ImportError as exc:
        module = (exc.name or "").partition(".")[0]
        if module == "trainpilot":
            raise  # our own module: a bug, not a missing extra
        if isinstance(exc, ModuleNotFoundError) and module:
            raise missing(name, feature, NAMES.get(module, module)) from None
        # installed but not importable (psycopg without libpq, torch without tensorboard...): say why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise missing(name, feature, f"a working install ({reason})") from None


def check(module: str, name: str, feature: str) -> None:
    """Raise `MissingExtra` now, before starting anything, if `module` cannot be imported."""
    with extra(name, feature):
        importlib.import_module(module)
