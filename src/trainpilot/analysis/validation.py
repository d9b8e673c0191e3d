"""Validation curves against training ones: overfitting, unstable evaluations, labels the model cannot fit.

Validation comes a few dozen times a run at most, and each point is noisy (a small split), so no
single evaluation decides anything. Overfitting is judged over every evaluation since the best one
together: a rank trend (Kendall's tau) that says the loss keeps rising, a rise that is large against
the improvement the run had made (not a few percent of drift), a training loss still falling, and a
validation accuracy (or IoU, mAP ...) that stopped improving. A healthy run whose validation loss
creeps up from over-confidence while its accuracy still rises is not overfitting anyone should stop.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from trainpilot.analysis.findings import Finding, Thresholds, r4
from trainpilot.analysis.loss import stuck
from trainpilot.analysis.rates import Rate
from trainpilot.analysis.trend import kendall_tau, median

# which validation score speaks for the run when it logs several: accuracy first, recall last
SCORE_RANK = ("acc", "map", "miou", "iou", "f1", "auc", "ap", "top1", "precision", "recall")


@dataclass
class Quality:
    """The run's validation score: its accuracy or, failing that, its best-ranked other higher-is-better
    score (mAP, IoU, F1 ...); one metric, so that its best and latest mean something."""

    key: str | None = None
    rank: int = len(SCORE_RANK)
    best: float = -math.inf
    latest: float | None = None
    evals: int = 0
    improved_at: int = 0  # the evaluation that set the best
    accuracy: bool = False  # an accuracy (chance is 1/C), not an IoU or mAP

    def observe(self, key: str, value: float, kind: str) -> None:
        rank = SCORE_RANK.index(kind) if kind in SCORE_RANK else len(SCORE_RANK)
        if key != self.key:
            if rank >= self.rank:
                return
            self.key, self.rank, self.accuracy = key, rank, kind == "acc"
            self.best, self.latest, self.evals, self.improved_at = -math.inf, None, 0, 0
        self.evals += 1
        self.latest = value
        if value > self.best + 1e-9:
            self.best, self.improved_at = value, self.evals

    def above_chance(self, classes: int | None) -> float | None:
        """The best score, rescaled so that chance is 0 and perfect is 1 (as is, for non-accuracies)."""
        if self.latest is None:
            return None
        if self.accuracy and classes:
            return (self.best - 1 / classes) / (1 - 1 / classes)
        return self.best

    def collapsed(self, drop: float) -> bool:
        """The latest score lost `drop` (a share) of the best one before it, at once."""
        return self.latest is not None and self.evals >= 2 and self.latest < (1 - drop) * self.best

    def stalled(self) -> bool:
        """No better than its best for the latest two evaluations (or never measured)."""
        return self.latest is None or self.evals - self.improved_at >= 2


def broke(step: int, evidence: dict[str, object], what: str, rate: Rate) -> Finding:
    """A sudden collapse of validation: the run diverged between two evaluations. At a learning rate
    far above its optimiser's range the rate is the first suspect; otherwise the data."""
    if rate.verdict == "high":
        said = rate.judged()
        fix = (
            rate.lower()
            + " and restore the last good checkpoint; add gradient clipping; if it breaks again, check the "
            "data near this step"
        )
    else:
        said = ""
        fix = (
            "a corrupted batch (NaN or huge values in the inputs or labels), a learning-rate spike or "
            "wrecked batch-norm statistics: check the data near this step, clip gradients, restore the last "
            "good checkpoint"
        )
    return Finding(
        "divergence",
        "critical",
        step,
        step,
        {**evidence, "lr_verdict": rate.verdict},
        f"{what}: the model broke between two evaluations{said}",
        fix,
    )


@dataclass
class ValLossTracker:
    key: str
    t: Thresholds
    first: float | None = None
    best: float = math.inf
    best_step: int | None = None
    train_at_best: float | None = None
    since_best: list[float] = field(default_factory=list)  # the best and every evaluation after it
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    evals: int = 0
    best_before: float = math.inf  # the best of the evaluations before the latest

    def observe(
        self, step: int, value: float, train: float | None, quality: Quality, rate: Rate
    ) -> list[Finding]:
        self.evals += 1
        self.recent.append(value)
        if self.first is None:
            self.first = value
        if value < self.best:
            self.best, self.best_step, self.train_at_best = value, step, train
            self.since_best = [value]
        else:
            self.since_best = [*self.since_best[-63:], value]
        return (
            self._collapse(step, value, rate)
            + self._overfitting(step, value, train, quality)
            + self._swinging(step)
        )

    def _collapse(self, step: int, value: float, rate: Rate) -> list[Finding]:
        """One evaluation far above every earlier one: the model broke between two evaluations (a
        corrupted batch, a learning-rate spike, wrecked batch-norm statistics), whatever the training
        loss logged in between shows."""
        if self.evals < 2 or value < self.t.val_jump * self.best_before:
            self.best_before = min(self.best_before, value)
            return []
        previous, self.best_before = self.best_before, min(self.best_before, value)
        return [
            broke(
                step,
                {"metric": self.key, "value": r4(value), "best_before": r4(previous)},
                f"{self.key} jumped to {value:.4g}, {value / max(previous, 1e-12):.0f}x its best so far "
                f"{previous:.4g}",
                rate,
            )
        ]

    def _overfitting(self, step: int, value: float, train: float | None, quality: Quality) -> list[Finding]:
        assert self.first is not None
        after = len(self.since_best) - 1
        if after < self.t.overfit_evals or train is None or self.train_at_best is None:
            return []
        rise = value - self.best
        improvement = self.first - self.best
        tau = kendall_tau(self.since_best)
        if (
            rise < self.t.overfit_rise * abs(self.best)
            or rise < self.t.overfit_share * improvement
            or tau < self.t.overfit_tau
            or improvement < self.t.overfit_rise * abs(self.best)  # it never learnt: not overfitting
            or train > (1 - self.t.overfit_rise) * self.train_at_best  # training no longer fits better
            or not quality.stalled()
        ):
            return []
        score = (
            ""
            if quality.latest is None
            else f"; validation score {quality.latest:.4g} vs best {quality.best:.4g}"
        )
        return [
            Finding(
                "overfitting",
                "warning",
                step,
                self.best_step,
                {
                    "val_metric": self.key,
                    "val": r4(value),
                    "best_val": r4(self.best),
                    "best_step": self.best_step,
                    "evaluations_since_best": after,
                    "rising_tau": r4(tau),
                    "train_now": r4(train),
                    "train_at_best": r4(self.train_at_best),
                },
                f"{self.key} rose from its best {self.best:.4g} (step {self.best_step}) to {value:.4g} over "
                f"{after} evaluations while the training loss kept falling ({self.train_at_best:.4g} -> "
                f"{train:.4g}){score}",
                "keep the best checkpoint and stop early; add augmentation, weight decay or dropout, or get "
                "more data",
            )
        ]

    def _swinging(self, step: int) -> list[Finding]:
        """Evaluations jumping up and down by a large share of their level: training is unstable."""
        values = list(self.recent)
        if len(values) < 6:
            return []
        level = median(values)
        moves = [b - a for a, b in itertools.pairwise(values)]
        big = [m for m in moves if abs(m) > self.t.val_swing * max(abs(level), 1e-12)]
        reversals = sum(1 for a, b in itertools.pairwise(big) if (a > 0) != (b > 0))
        if reversals < 3:
            return []
        self.recent.clear()
        return [
            Finding(
                "oscillation",
                "warning",
                step,
                step,
                {"metric": self.key, "recent": [r4(v) for v in values], "median": r4(level)},
                f"{self.key} swings up and down by more than {100 * self.t.val_swing:.0f} % of its level "
                f"from one evaluation to the next ({', '.join(f'{v:.3g}' for v in values)})",
                "training is unstable: lower the learning rate 2-5x, add warm-up or gradient clipping",
            )
        ]


@dataclass
class AccuracyTracker:
    """Training accuracy (smoothed) against validation accuracy: labels it cannot fit, chance level."""

    t: Thresholds
    train: float | None = None  # smoothed per-batch training accuracy (as is when logged per epoch)
    train_points: int = 0
    val_points: int = 0
    below_chance: int = 0  # training points in a row well below chance
    apart: int = 0  # evaluations in a row with validation far above a flat training accuracy
    chance_run: int = 0  # evaluations in a row at chance
    memorising: int = 0  # evaluations in a row with training accuracy near 1 far above validation

    def observe_train(self, step: int, key: str, value: float, classes: int | None) -> list[Finding]:
        self.train_points += 1
        per_epoch = self.val_points >= 2 and self.train_points <= 1.5 * self.val_points
        alpha = 1.0 if per_epoch else 0.1
        self.train = value if self.train is None else (1 - alpha) * self.train + alpha * value
        return self._class_ordered(step, key, classes)

    def class_ordered(self, classes: int | None) -> bool:
        return bool(classes) and self.below_chance >= 5

    def _class_ordered(self, step: int, key: str, classes: int | None) -> list[Finding]:
        """Training accuracy far below chance for many batches: a random model on shuffled data scores
        1/C, so each batch must hold one class the model is not predicting: data read in class order."""
        if not classes or self.train is None:
            return []
        self.below_chance = self.below_chance + 1 if self.train < 0.5 / classes else 0
        per_epoch = self.val_points >= 2 and self.train_points <= 1.5 * self.val_points
        needed = 1 if per_epoch else 2 * self.t.persist  # an epoch's mean far below chance: one is enough
        if self.below_chance != needed:
            return []
        return [
            Finding(
                "unshuffled_data",
                "warning",
                step,
                step - 2 * self.t.persist,
                {"metric": key, "train_acc": r4(self.train), "chance": r4(1 / classes), "classes": classes},
                f"{key} stays at {self.train:.2f}, far below chance (1/{classes} = {1 / classes:.2f}): each "
                "batch holds a single class the model is not predicting, so the data is read in class order",
                "shuffle the training data (DataLoader(shuffle=True), or a sampler that mixes classes)",
            )
        ]

    def observe_val(
        self,
        step: int,
        key: str,
        value: float,
        quality: Quality,
        classes: int | None,
        trained: bool,
        regularised: bool,
        rate: Rate,
    ) -> list[Finding]:
        """One validation accuracy; `trained`: the training loss has had enough steps to judge chance."""
        self.val_points += 1
        out = self._memorising(step, key, value, quality)
        if classes and trained:
            at_chance = value <= self.t.chance_acc / classes
            self.chance_run = self.chance_run + 1 if at_chance else 0
            if self.chance_run >= self.t.chance_evals:
                out.append(
                    stuck(
                        step,
                        key,
                        f"{key} stays at {value:.3g}, chance for {classes} classes ({1 / classes:.3g})",
                        {"metric": key, "val_acc": r4(value), "chance": r4(1 / classes), "classes": classes},
                        rate,
                    )
                )
        # A smoothed training accuracy lags a model that learns fast, so the gap must hold for three
        # evaluations: a lag closes as learning slows, labels the model cannot fit keep it open.
        # mixup, cutmix and label smoothing score training batches against mixed targets: a gap by design
        apart = (
            not regularised
            and self.train is not None
            and value >= 0.5
            and value - self.train >= self.t.noisy_gap
        )
        self.apart = self.apart + 1 if apart and quality.evals >= 3 else 0
        if self.apart >= 3:
            assert self.train is not None
            out.append(
                Finding(
                    "noisy_labels",
                    "warning",
                    step,
                    step,
                    {"val_metric": key, "val_acc": r4(value), "train_acc": r4(self.train)},
                    f"training accuracy stays at {self.train:.2f}, far below validation accuracy "
                    f"{value:.2f}: the model cannot fit its own training labels, which points at label noise "
                    "(wrong labels in the training set)",
                    "check and clean the training labels (relabel or drop the wrong ones, or train with a "
                    "noise-robust loss); with mixup, cutmix, heavy augmentation or strong label smoothing "
                    "this gap is expected",
                )
            )
        return out

    def observe_score(
        self, step: int, key: str, quality: Quality, trained: bool, rate: Rate
    ) -> list[Finding]:
        """An IoU, mAP or F1 still about zero after training had time to work: nothing was learnt."""
        if not trained or quality.accuracy or quality.evals < self.t.chance_evals or quality.best >= 0.05:
            return []
        return [
            stuck(
                step,
                key,
                f"{key} is still {quality.best:.3g} at best after {quality.evals} evaluations",
                {"metric": key, "best": r4(quality.best), "evaluations": quality.evals},
                rate,
            )
        ]

    def _memorising(self, step: int, key: str, value: float, quality: Quality) -> list[Finding]:
        """Training accuracy near 1 far above a validation accuracy that stopped improving."""
        gap = self.train is not None and self.train >= 0.95 and self.train - value >= self.t.memorise_gap
        self.memorising = self.memorising + 1 if gap and quality.evals >= 3 and quality.stalled() else 0
        if self.memorising < 2:
            return []
        assert self.train is not None
        return [
            Finding(
                "overfitting",
                "warning",
                step,
                step,
                {
                    "val_metric": key,
                    "val_acc": r4(value),
                    "best_val_acc": r4(quality.best),
                    "train_acc": r4(self.train),
                },
                f"training accuracy {self.train:.2f} against validation accuracy {value:.2f}, which stopped "
                f"improving at {quality.best:.2f}: the model memorises its training set",
                "more data or augmentation, weight decay or dropout, a smaller model; keep the best "
                "checkpoint",
            )
        ]
