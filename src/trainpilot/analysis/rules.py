"""Detectors of training problems: incremental, constant work per new point, reasoning on shape and scale.

Each tracker keeps a few running numbers (exponential averages, a best value, a small fixed ring of
recent values) and compares the curve with itself: its own start, its own best, its own noise.
Absolute constants are avoided where a ratio to the curve's own scale will do, so that a run whose
loss lives around 0.01 and one around 5.0 are judged alike. Thresholds are the `Thresholds` fields,
documented there, and configurable.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    warmup: int = 20  # points ignored by spike/divergence detection: the first steps are noisy by nature
    divergence_ratio: float = 3.0  # smoothed loss this many times above its best (and above its start)
    explode_ratio: float = 10.0  # a raw loss this many times its starting level
    spike_sigmas: float = 10.0  # a point this many mean-absolute-deviations above the smoothed loss
    spike_floor: float = 0.5  # ... and at least this fraction of the smoothed level above it
    oscillation_spikes: int = 4  # this many spikes within `oscillation_window` points
    oscillation_window: int = 200
    plateau_window: int = 300  # no more than `plateau_gain` relative improvement over half the points seen,
    plateau_min: int = 40  # ... at most this many, at least this many (so short, per-epoch logs count too)
    plateau_gain: float = 0.01
    underfit_level: float = 0.5  # a plateau above this fraction of ln(classes) (or of the start) underfits
    chance_tolerance: float = 0.03  # loss within 3 % of ln(classes) ...
    chance_after: int = 150  # ... for half this many points in a row, and at least this many in all
    start_ratio: float = 3.0  # a cross-entropy starting this many times above ln(classes)
    gap_ratio: float = 3.0  # validation loss this many times the training loss, on two evaluations
    overfit_rise: float = 0.10  # validation loss 10 % above its best while training loss keeps falling
    grad_explode_ratio: float = 20.0  # gradient norm this many times its recent median
    vanishing_ratio: float = 1e-3  # first-layer gradient norm below this fraction of the last layer's
    persist: int = 10  # consecutive points a gradient condition must hold
    bottleneck_ratio: float = 2.0  # step time this many times its early median (or throughput a half)
    input_share: float = 0.5  # ... or, where data-loading time is logged, this share of the step waits on it
    weak_class_gap: float = 0.25  # a class this far below the mean per-class accuracy


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str  # info | warning | critical
    step: int | None
    start_step: int | None
    evidence: dict[str, Any]
    message: str
    suggestion: str

    def as_data(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "step": self.step,
            "start_step": self.start_step,
            "evidence": self.evidence,
            "message": self.message,
            "suggestion": self.suggestion,
        }


CHECK_EVERY = 4  # window statistics are recomputed every this many points, not on every one
PACE_WINDOW = 30


def _r(x: float) -> float:
    return float(f"{x:.4g}")


@dataclass
class LossTracker:
    """A training loss: divergence, explosion, spikes, oscillation, plateaus, being stuck at chance."""

    key: str
    t: Thresholds
    component: bool = False  # a part of the loss (box_loss): no plateau, no cross-entropy assumptions
    n: int = 0
    start: float | None = None
    start_sum: float = 0.0
    ema: float | None = None
    mad: float = 0.0
    best: float = math.inf
    best_step: int | None = None
    spikes: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=301))  # (step, ema)
    rising: int = 0
    at_chance: int = 0  # consecutive points with the smoothed loss at ln(classes)

    def _initial(self, step: int, classes: int | None) -> list[Finding]:
        """A cross-entropy that starts far above ln(classes): unnormalised inputs or a bad initialisation.

        With the class count unknown, ln(1000) bounds it, and a loss that may not be a cross-entropy
        at all only earns an info.
        """
        assert self.start is not None
        chance = math.log(classes or 1000)
        if self.start <= self.t.start_ratio * chance:
            return []
        what = f"ln({classes}) = {chance:.3g}" if classes else f"ln(1000) = {chance:.3g}, more than any"
        return [
            Finding(
                "bad_initial_loss",
                "warning" if classes else "info",
                step,
                0,
                {"metric": self.key, "start": _r(self.start), "ln_classes": _r(chance), "classes": classes},
                f"{self.key} starts at {self.start:.4g}, far above the {what} untrained classifier gives",
                "normalise the inputs (mean 0, std 1 per channel), check the initialisation and the scale of "
                "the last layer's outputs",
            )
        ]

    def observe(self, step: int, value: float, lr: float | None, classes: int | None) -> list[Finding]:
        out: list[Finding] = []
        self.n += 1
        if self.n <= 5:
            self.start_sum += value
            self.start = self.start_sum / self.n
        if self.ema is None:
            self.ema = value
        deviation = abs(value - self.ema)
        spike = (
            self.n > self.t.warmup
            and value > self.ema + self.t.spike_sigmas * self.mad
            and value - self.ema > self.t.spike_floor * abs(self.ema)
        )
        if spike:
            self.spikes.append(step)
            out.append(
                Finding(
                    "loss_spike",
                    "warning",
                    step,
                    step,
                    {
                        "metric": self.key,
                        "value": _r(value),
                        "smoothed": _r(self.ema),
                        "typical_deviation": _r(self.mad),
                    },
                    f"{self.key} jumped to {value:.4g} at step {step}, "
                    f"{(value - self.ema) / max(self.mad, 1e-12):.0f}x its usual deviation "
                    f"above {self.ema:.4g}",
                    "a bad batch or too high a learning rate: clip gradients, check the data at this step, "
                    "or lower the learning rate",
                )
            )
        previous = self.ema
        self.ema = 0.9 * self.ema + 0.1 * value
        self.mad = deviation if self.n == 1 else 0.95 * self.mad + 0.05 * deviation
        self.rising = self.rising + 1 if self.ema > previous else 0
        if self.ema < self.best:
            self.best, self.best_step = self.ema, step
        self.history.append((step, self.ema))
        assert self.start is not None
        recent = [s for s in self.spikes if s > step - self.t.oscillation_window]
        if len(recent) >= self.t.oscillation_spikes:
            out.append(
                Finding(
                    "oscillation",
                    "warning",
                    step,
                    recent[0],
                    {"metric": self.key, "spikes": len(recent), "window": self.t.oscillation_window},
                    f"{self.key} spiked {len(recent)} times in {self.t.oscillation_window} steps",
                    "the learning rate is likely too high for this batch size: lower it 2-5x or add warm-up",
                )
            )
            self.spikes.clear()
        exploded = self.n > 5 and value > self.t.explode_ratio * max(self.start, 1e-12)
        diverged = (
            self.n > self.t.warmup
            and self.rising >= 5
            and self.best_step is not None
            and self.ema > self.t.divergence_ratio * max(self.best, 1e-12)
            and self.ema > self.start
        )
        if exploded or diverged:
            out.append(
                Finding(
                    "divergence",
                    "critical",
                    step,
                    self.best_step,
                    {
                        "metric": self.key,
                        "value": _r(value),
                        "smoothed": _r(self.ema),
                        "best": _r(self.best),
                        "best_step": self.best_step,
                        "start": _r(self.start),
                        "lr": lr,
                    },
                    f"{self.key} is diverging: {self.ema:.4g} now against a best of {self.best:.4g} "
                    f"at step {self.best_step} (it started at {self.start:.4g})",
                    "lower the learning rate 3-10x (or restore the last good checkpoint), add gradient "
                    "clipping, check for bad inputs",
                )
            )
            if lr is not None and (
                self.best_step is None
                or self.best_step < 10 * max(self.t.warmup, 1)
                or self.best > 0.8 * self.start
            ):
                out.append(
                    Finding(
                        "lr_too_high",
                        "critical",
                        step,
                        self.best_step,
                        {"lr": lr, "metric": self.key, "best": _r(self.best), "start": _r(self.start)},
                        f"the loss blew up early with lr={lr:.3g}: the learning rate is too high",
                        f"restart with lr around {lr / 10:.2g} (10x lower), or add warm-up",
                    )
                )
        if self.n == 5:
            out += self._initial(step, classes)
        if classes:
            chance = math.log(classes)
            near = abs(self.ema - chance) <= max(self.t.chance_tolerance * chance, 2 * self.mad)
            self.at_chance = self.at_chance + 1 if near else 0
            if self.n >= self.t.chance_after and self.at_chance >= self.t.chance_after // 2:
                out.append(
                    Finding(
                        "stuck_at_chance",
                        "warning",
                        step,
                        0,
                        {
                            "metric": self.key,
                            "smoothed": _r(self.ema),
                            "ln_classes": _r(chance),
                            "classes": classes,
                        },
                        f"{self.key} stays at {self.ema:.4g} ~ ln({classes}) = {chance:.4g}: "
                        "the model predicts every class equally, it has learned nothing",
                        "check the labels match the inputs, the learning rate (too low or far too high), "
                        "the initialisation, and that gradients reach the first layers",
                    )
                )
        if self.n >= 2 * self.t.plateau_min and not self.component:
            out += self._plateau(step, lr, classes)
        return out

    def _plateau(self, step: int, lr: float | None, classes: int | None) -> list[Finding]:
        """A loss that stopped improving; if it stopped high, the model underfits.

        High means above `underfit_level` of ln(classes) for a classifier (a fit that still leaves
        much of the untrained model's uncertainty), or above that fraction of its own start otherwise;
        a loss at chance level is `stuck_at_chance`'s, not this.
        """
        assert self.ema is not None and self.start is not None
        window = min(self.t.plateau_window, self.n // 2)
        old_step, old = self.history[-window - 1]
        gain = (old - self.ema) / max(abs(old), 1e-12)
        if gain >= self.t.plateau_gain or self.ema < 0.02 * self.start:  # improving, or converged
            return []
        if self.ema > 1.5 * self.start:  # a diverged loss that stopped rising is divergence's
            return []
        out = [
            Finding(
                "plateau",
                "info",
                step,
                old_step,
                {
                    "metric": self.key,
                    "relative_gain": _r(gain),
                    "window": window,
                    "smoothed": _r(self.ema),
                    "lr": lr,
                },
                f"{self.key} improved {100 * gain:.2g} % over the last {step - old_step} steps",
                "if it is not done: lower the learning rate (a schedule step), or raise it if it "
                "has been tiny throughout; otherwise stop early",
            )
        ]
        reference = math.log(classes) if classes else self.start
        level = self.ema / max(reference, 1e-12)
        at_chance = classes is not None and level > 1 - self.t.chance_tolerance
        if level > self.t.underfit_level and not at_chance:
            what = f"ln({classes}) = {reference:.3g}" if classes else f"its start {reference:.4g}"
            out.append(
                Finding(
                    "underfitting",
                    "warning" if classes else "info",
                    step,
                    old_step,
                    {
                        "metric": self.key,
                        "smoothed": _r(self.ema),
                        "reference": _r(reference),
                        "level": _r(level),
                    },
                    f"{self.key} stopped improving at {self.ema:.4g}, {100 * level:.0f} % of {what}: "
                    "the model does not fit even its training data",
                    "a bigger model or longer training, a higher learning rate or a schedule that decays "
                    "later, less regularisation (weight decay, dropout, augmentation)",
                )
            )
        return out


@dataclass
class ValTracker:
    """Validation loss against training loss: overfitting."""

    key: str
    t: Thresholds
    best: float = math.inf
    best_step: int | None = None
    train_at_best: float | None = None
    evals: int = 0
    above: int = 0  # consecutive evaluations above the best by the margin
    wide: int = 0  # consecutive evaluations with a validation/training ratio above gap_ratio
    first_train: float | None = None

    def observe(self, step: int, value: float, train: float | None) -> list[Finding]:
        self.evals += 1
        if value < self.best:
            self.best, self.best_step, self.train_at_best = value, step, train
            self.above = 0
        else:
            self.above = self.above + 1 if value > (1 + self.t.overfit_rise) * self.best else 0
        return self._rising(step, value, train) + self._gap(step, value, train)

    def _finding(self, step: int, evidence: dict[str, Any], message: str, suggestion: str) -> list[Finding]:
        """An overfitting finding, whichever of the two signs showed it."""
        return [
            Finding(
                "overfitting",
                "warning",
                step,
                self.best_step,
                {"val_metric": self.key, **evidence},
                message,
                suggestion,
            )
        ]

    def _gap(self, step: int, value: float, train: float | None) -> list[Finding]:
        """A widening generalisation gap: validation loss a multiple of a training loss that keeps falling."""
        if train is None or train <= 0:
            return []
        self.first_train = self.first_train or train
        self.wide = self.wide + 1 if value > self.t.gap_ratio * train and value - train > 0.3 * value else 0
        if self.evals >= 3 and self.wide >= 2 and train < 0.5 * self.first_train:
            return self._finding(
                step,
                {"val": _r(value), "train_now": _r(train), "ratio": _r(value / train)},
                f"{self.key} is {value / train:.1f}x the training loss ({value:.4g} vs {train:.4g}): "
                "the model memorises its training set",
                "more data or augmentation, weight decay or dropout, a smaller model, or stop early",
            )
        return []

    def _rising(self, step: int, value: float, train: float | None) -> list[Finding]:
        """Validation loss climbing away from its best while training loss still falls."""
        if (
            self.evals >= 3
            and self.above >= 2
            and train is not None
            and self.train_at_best is not None
            and train < 0.9 * self.train_at_best
        ):
            return self._finding(
                step,
                {
                    "val": _r(value),
                    "best_val": _r(self.best),
                    "best_step": self.best_step,
                    "train_now": _r(train),
                    "train_at_best": _r(self.train_at_best),
                },
                f"{self.key} rose to {value:.4g} from its best {self.best:.4g} at step {self.best_step} "
                f"while training loss kept falling ({self.train_at_best:.4g} -> {train:.4g})",
                "stop early / keep the best checkpoint, add augmentation or weight decay, get more data",
            )
        return []


@dataclass
class GradTracker:
    """Gradient norms: explosion against its own recent median; vanishing first layer; all-zero gradients."""

    t: Thresholds
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    first: float | None = None
    last: float | None = None
    vanishing: int = 0
    zero: int = 0

    def observe(self, step: int, key: str, which: str | None, value: float) -> list[Finding]:
        out: list[Finding] = []
        if which == "first":
            self.first = value
        elif which == "last":
            self.last = value
        else:
            if len(self.recent) >= 30:  # a baseline past warm-up, when gradients legitimately grow
                median = sorted(self.recent)[len(self.recent) // 2]
                if median > 0 and value > self.t.grad_explode_ratio * median:
                    out.append(
                        Finding(
                            "exploding_gradient",
                            "critical",
                            step,
                            step,
                            {"metric": key, "value": _r(value), "recent_median": _r(median)},
                            f"gradient norm {value:.4g} is {value / median:.0f}x "
                            f"its recent median {median:.4g}",
                            "clip gradients (e.g. max norm 1.0), lower the learning rate, check for "
                            "bad inputs or a loss that can reach log(0)",
                        )
                    )
            self.recent.append(value)
            self.zero = self.zero + 1 if value == 0 else 0
            if self.zero == self.t.persist:
                out.append(
                    Finding(
                        "dying_relu",
                        "warning",
                        step,
                        step - self.t.persist,
                        {"metric": key, "zero_for_steps": self.t.persist},
                        "gradients are exactly zero: the units feeding them are dead (or nothing is trained)",
                        "lower the learning rate, use LeakyReLU/GELU or a better initialisation, "
                        "check that parameters require grad",
                    )
                )
        if which is not None and self.first is not None and self.last is not None and self.last > 0:
            ratio = self.first / self.last
            self.vanishing = self.vanishing + 1 if ratio < self.t.vanishing_ratio else 0
            if self.vanishing == self.t.persist:
                out.append(
                    Finding(
                        "vanishing_gradient",
                        "warning",
                        step,
                        step - self.t.persist,
                        {"first_layer": _r(self.first), "last_layer": _r(self.last), "ratio": _r(ratio)},
                        f"the first layer's gradient is {ratio:.1e} of the last layer's: it barely learns",
                        "use ReLU-family activations instead of sigmoid/tanh, batch normalisation, "
                        "residual connections, or a better initialisation",
                    )
                )
        return out


@dataclass
class PaceTracker:
    """Step time and throughput against their own early median: an input pipeline that falls behind."""

    key: str
    t: Thresholds
    higher_is_worse: bool
    n: int = 0
    early: list[float] = field(default_factory=list)
    baseline: float | None = None
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=PACE_WINDOW))

    def observe(self, step: int, value: float) -> list[Finding]:
        self.n += 1
        if self.n <= 10:
            return []  # compilation, cache warm-up
        if self.baseline is None:
            self.early.append(value)
            if len(self.early) == 40:
                self.baseline = sorted(self.early)[20]
            return []
        self.recent.append(value)
        if len(self.recent) < PACE_WINDOW:
            return []
        median = sorted(self.recent)[len(self.recent) // 2]
        ratio = median / self.baseline if self.higher_is_worse else self.baseline / max(median, 1e-12)
        if ratio >= self.t.bottleneck_ratio:
            self.recent.clear()
            evidence = {
                "metric": self.key,
                "recent_median": _r(median),
                "baseline": _r(self.baseline),
                "ratio": _r(ratio),
            }
            message = (
                f"{self.key} is {ratio:.1f}x worse than early in the run "
                f"({self.baseline:.4g} -> {median:.4g})"
            )
            return [_input_bottleneck(step, evidence, message, "may be")]  # a slowing step has other causes
        return []


@dataclass
class InputShareTracker:
    """The share of each step spent waiting for data, where the trainer logs it (``data_time``).

    With data time known, this replaces the step-time trend: a whole step that slows down (another
    job on the machine, thermal throttling) is no input bottleneck, and a loader that is too slow
    from the first step on is one. Data and step time are paired by step, whichever comes first.
    """

    t: Thresholds
    key: str = "data_time"
    pending: dict[str, tuple[int, float]] = field(default_factory=dict)  # 'data' | 'step' -> (step, s)
    pairs: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=PACE_WINDOW))
    seen: int = 0

    def observe(self, step: int, which: str, value: float) -> list[Finding]:
        other = self.pending.pop("step" if which == "data" else "data", None)
        if other is None or other[0] != step:
            self.pending[which] = (step, value)
            return []
        self.pairs.append((value, other[1]) if which == "data" else (other[1], value))
        self.seen += 1
        if len(self.pairs) < PACE_WINDOW or self.seen % CHECK_EVERY:
            return []  # the medians of a window move slowly: every few steps is soon enough
        share = sorted(d / max(total, 1e-12) for d, total in self.pairs)[PACE_WINDOW // 2]
        if share < self.t.input_share:
            return []
        data = sorted(d for d, _ in self.pairs)[PACE_WINDOW // 2]
        total = sorted(t for _, t in self.pairs)[PACE_WINDOW // 2]
        evidence = {"metric": self.key, "data_time": _r(data), "step_time": _r(total), "share": _r(share)}
        message = (
            f"the training loop waits for data {min(share, 1.0):.0%} of each step "
            f"(medians of the last {PACE_WINDOW} steps: {data:.4g} s of {total:.4g} s)"
        )
        return [_input_bottleneck(step, evidence, message, "is")]


def _input_bottleneck(step: int, evidence: dict[str, Any], message: str, verdict: str) -> Finding:
    """One finding for both clues (data-time share, step-time trend): the same fault, the same fixes."""
    return Finding(
        "input_bottleneck",
        "warning",
        step,
        step - PACE_WINDOW,
        evidence,
        message,
        f"the input pipeline {verdict} the bottleneck: more DataLoader workers, pin_memory, prefetching, "
        "faster storage, or decode/augment on the GPU",
    )


def weak_classes(per_class: dict[str, float], step: int, t: Thresholds) -> list[Finding]:
    """Classes far below the others (from val/acc/<class> metrics)."""
    if len(per_class) < 3:
        return []
    mean = sum(per_class.values()) / len(per_class)
    weak = {name: _r(v) for name, v in per_class.items() if v < mean - t.weak_class_gap}
    if not weak or mean < 0.3:
        return []
    names = ", ".join(sorted(weak))
    return [
        Finding(
            "class_weakness",
            "info",
            step,
            step,
            {"weak": weak, "mean_accuracy": _r(mean)},
            f"class(es) {names} lag the mean per-class accuracy {mean:.2f}",
            "look at their confusion-matrix row, add or relabel examples of them, or weight the loss",
        )
    ]
