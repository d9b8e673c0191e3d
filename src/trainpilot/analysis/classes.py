"""How many classes a run has, from whatever it says, and which classes lag the others.

The class count sets chance level: ln(C) for a cross-entropy, 1/C for an accuracy. Few writers log
it, so it is inferred, surest first: the run's config (``num_classes``, ``nc``, ``num_labels``, an
``id2label`` table ...), the number of per-class metrics, or an initial cross-entropy of ln(C) that
an early accuracy near 1/C confirms (an untrained classifier gives both; a segmentation or
regression loss that happens to start near ln(4) has no accuracy to confirm it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trainpilot.analysis.findings import Finding, Thresholds, r4

CLASS_KEYS = frozenset(
    {"num_classes", "n_classes", "classes", "nc", "num_labels", "n_class", "num_class", "number_of_classes"}
)
LABEL_TABLES = frozenset({"id2label", "label2id", "class_names", "names", "labels"})


def classes_from_config(config: dict[str, Any]) -> int | None:
    """The class count a run's config states, looking into nested sections (``model.num_classes``)."""
    for key, value in _items(config):
        name = key.lower().rsplit(".", 1)[-1]
        if name in CLASS_KEYS and isinstance(value, int) and not isinstance(value, bool) and value >= 2:
            return value
        if name in CLASS_KEYS | LABEL_TABLES and isinstance(value, list | dict) and len(value) >= 2:
            return len(value)
    return None


def _items(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        yield f"{prefix}{key}", value
        if isinstance(value, dict) and str(key).lower() not in LABEL_TABLES:
            yield from _items(value, f"{prefix}{key}.")


REGULARISERS = frozenset(
    {"mixup", "cutmix", "label_smoothing", "smoothing", "label_smoothing_factor", "mix_up", "cut_mix"}
)


def regularised(config: dict[str, Any]) -> bool:
    """Whether the config names mixup, cutmix or label smoothing (as a key with a non-zero value, or as
    a value such as ``augmentation: mixup``): each raises the training loss's floor on purpose."""
    for key, value in _items(config):
        name = key.lower().rsplit(".", 1)[-1]
        if name in REGULARISERS and value not in (None, False, 0, 0.0, "", "none"):
            return True
        if isinstance(value, str) and any(word in value.lower() for word in ("mixup", "cutmix")):
            return True
    return False


def optimiser(config: dict[str, Any]) -> str | None:
    """``sgd`` or ``adam`` (any Adam-family optimiser) where the config names one."""
    for key, value in _items(config):
        if "optim" in key.lower() and isinstance(value, str):
            name = value.lower()
            return "sgd" if "sgd" in name else "adam" if "adam" in name or "lamb" in name else None
    return None


def classes_from_start(start: float, early_accuracy: float | None) -> int | None:
    """C when a loss starting at `start` looks like an untrained C-class cross-entropy and an early
    accuracy (the first few points' mean) is near chance for that C."""
    if early_accuracy is None or not 0.5 < start < 12:
        return None
    guess = round(math.exp(start))
    if guess < 2 or abs(math.exp(start) - guess) > 0.15 * guess:
        return None
    return guess if early_accuracy <= 2.5 / guess else None


@dataclass
class PerClass:
    """Per-class validation accuracy: a class far below the rest on two evaluations in a row."""

    t: Thresholds
    latest: dict[str, float] = field(default_factory=dict)
    behind: dict[str, int] = field(default_factory=dict)  # class -> evaluations in a row it lagged

    def observe(self, step: int, updates: dict[str, float], stalled: bool) -> list[Finding]:
        """One evaluation's per-class accuracies (those that came at this step). Classes are learnt at
        different speeds: only once the overall score has `stalled` is a class still behind weak."""
        self.latest.update(updates)
        return self._judge(step, updates, stalled) if len(self.latest) >= 3 else []

    def _judge(self, step: int, updates: dict[str, float], stalled: bool) -> list[Finding]:
        weak = {}
        for name, value in self.latest.items():
            if name not in updates:
                continue
            others = [v for k, v in self.latest.items() if k != name]
            mean = sum(others) / len(others)
            lagging = mean >= 0.5 and value < mean - self.t.weak_class_gap
            self.behind[name] = self.behind.get(name, 0) + 1 if lagging else 0
            if self.behind[name] >= 3 or (self.behind[name] >= 2 and stalled):
                weak[name] = (r4(value), r4(mean))
        if not weak:
            return []
        names = ", ".join(sorted(weak))
        return [
            Finding(
                "class_weakness",
                "warning",
                step,
                step,
                {
                    "weak": {k: v for k, (v, _) in weak.items()},
                    "others_mean": {k: m for k, (_, m) in weak.items()},
                },
                f"{'class' if len(weak) == 1 else 'classes'} {names} "
                f"{'stays' if len(weak) == 1 else 'stay'} far below the other classes' validation accuracy "
                f"({', '.join(f'{k}: {v:.2f} vs {m:.2f}' for k, (v, m) in sorted(weak.items()))})",
                "look at their confusion-matrix rows and their share of the training set: add or relabel "
                "examples of them, oversample them, or weight the loss",
            )
        ]
