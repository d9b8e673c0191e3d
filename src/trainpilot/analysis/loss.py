"""The training loss: divergence, spikes and oscillation, plateaus, being stuck at chance, a bad start.

A tracker keeps a few running numbers (an exponential average, its mean absolute deviation, the
best value, a fixed ring of recent averages) and compares the curve with itself: its own start,
best and noise. Chance level and "too high" need the class count (classes.py) and are only judged
for a loss that starts where an untrained classifier's cross-entropy does, ln(C); a segmentation,
keypoint or detection loss has no absolute scale, so for it only relative shape counts.

Losses logged once per epoch (Keras, timm, Lightning's ``_epoch``) have a handful of points: the
tracker is told the cadence (`dense`) and counts evaluations instead of steps for them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from trainpilot.analysis.findings import Finding, Thresholds, r4
from trainpilot.analysis.rates import Rate


@dataclass
class Context:
    """What the run knows beside this curve when one of its points arrives."""

    lr: float | None = None
    classes: int | None = None
    dense: bool = True  # several points per epoch, not one
    score: float | None = None  # the best validation score so far, 0 at chance and 1 perfect
    regularised: bool = False  # mixup, cutmix or label smoothing: the training loss has a high floor
    class_ordered: bool = False  # training accuracy below chance: batches of one class (unshuffled data)
    trained: bool = False  # training went on long enough to call a curve that has not moved stuck
    rate: Rate = field(default_factory=Rate)  # the learning rate chosen, against its optimiser's range


@dataclass
class LossTracker:
    key: str
    t: Thresholds
    component: bool = False  # a part of the loss (box_loss): no cross-entropy assumptions
    n: int = 0
    start: float | None = None  # the mean of the first five points; a per-epoch loss's first epoch
    head: list[float] = field(default_factory=list)
    initial_judged: bool = False
    ema: float | None = None
    mad: float = 0.0
    best: float = math.inf
    best_step: int | None = None
    best_n: int = 0
    spikes: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=301))  # (step, ema)
    rising: int = 0
    at_chance: int = 0  # consecutive points with the smoothed loss at ln(classes)

    def cross_entropy(self, classes: int | None) -> bool:
        """Whether this loss is a classifier's cross-entropy over `classes` (it starts near ln C)."""
        if self.component or not classes or self.start is None:
            return False
        return 0.75 * math.log(classes) <= self.start <= self.t.start_ratio * 3 * math.log(classes)

    def observe(self, step: int, value: float, ctx: Context) -> list[Finding]:
        out: list[Finding] = []
        self.n += 1
        if len(self.head) < 5:
            self.head.append(value)
        # the cadence is known after a couple of evaluations: until then, and for per-step losses,
        # the start is the mean of the first points; a per-epoch loss starts with its first epoch
        self.start = self.head[0] if not ctx.dense else sum(self.head) / len(self.head)
        alpha = 0.1 if ctx.dense else 0.5
        warmup = self.t.warmup if ctx.dense else 2
        if self.ema is None:
            self.ema = value
        deviation = abs(value - self.ema)
        if ctx.dense and self.n > warmup:
            out += self._spike(step, value)
        previous = self.ema
        self.ema = (1 - alpha) * self.ema + alpha * value
        self.mad = deviation if self.n == 1 else 0.95 * self.mad + 0.05 * deviation
        self.rising = self.rising + 1 if self.ema > previous else 0
        if self.ema < self.best:
            self.best, self.best_step, self.best_n = self.ema, step, self.n
        self.history.append((step, self.ema))
        out += self._diverging(step, value, ctx, warmup)
        if not self.initial_judged and self.n >= (5 if ctx.dense else 2):
            self.initial_judged = True
            out += self._initial(step, ctx)
        if self.cross_entropy(ctx.classes):
            out += self._chance(step, ctx)
        minimum = 2 * self.t.plateau_min if ctx.dense else 6
        if self.n >= minimum and not self.component:
            out += self._plateau(step, ctx)
        return out

    def _spike(self, step: int, value: float) -> list[Finding]:
        assert self.ema is not None
        if not (
            value > self.ema + self.t.spike_sigmas * self.mad
            and value - self.ema > self.t.spike_floor * abs(self.ema)
        ):
            return []
        self.spikes.append(step)
        out = [
            Finding(
                "loss_spike",
                "warning",
                step,
                step,
                {
                    "metric": self.key,
                    "value": r4(value),
                    "smoothed": r4(self.ema),
                    "typical_deviation": r4(self.mad),
                },
                f"{self.key} jumped to {value:.4g} at step {step}, {value / max(self.ema, 1e-12):.1f}x its "
                f"smoothed level {self.ema:.4g}",
                "a bad batch or too high a learning rate: check the data at this step, clip gradients, "
                "or lower the learning rate",
            )
        ]
        recent = [s for s in self.spikes if s > step - self.t.oscillation_window]
        if len(recent) >= self.t.oscillation_spikes:
            self.spikes.clear()
            out.append(
                Finding(
                    "oscillation",
                    "warning",
                    step,
                    recent[0],
                    {"metric": self.key, "spikes": len(recent), "window": self.t.oscillation_window},
                    f"{self.key} spiked {len(recent)} times within {self.t.oscillation_window} steps",
                    "the learning rate is likely too high for this batch size: lower it 2-5x or add warm-up; "
                    "if the data is read in class order, shuffle it",
                )
            )
        return out

    def _diverging(self, step: int, value: float, ctx: Context, warmup: int) -> list[Finding]:
        """A loss far above where it started and still climbing: one finding, whichever the cause.

        Early (its best came within the first few dozen points, or it never got 20 % below its start)
        with a learning rate known, the cause is the learning rate; later, something else changed.
        """
        assert self.ema is not None and self.start is not None
        exploded = self.n > 5 and value > self.t.explode_ratio * max(self.start, 1e-12)
        rising = self.rising >= (5 if ctx.dense else 2)
        diverged = (
            self.n > warmup
            and rising
            and self.ema > self.t.divergence_ratio * max(self.best, 1e-12)
            and self.ema > self.start
        )
        # climbing well above its start before it ever made progress: caught within a few dozen steps
        early_rise = (
            self.n > warmup
            and rising
            and self.ema > self.t.early_rise * self.start
            and self.best > 0.8 * self.start
            and not ctx.class_ordered  # class-ordered batches make the loss climb too, for another reason
        )
        if not (exploded or diverged or early_rise):
            return []
        early = self.best_n <= 3 * warmup or self.best > 0.8 * self.start
        evidence = {
            "metric": self.key,
            "value": r4(value),
            "smoothed": r4(self.ema),
            "best": r4(self.best),
            "best_step": self.best_step,
            "start": r4(self.start),
            "lr": ctx.lr,
        }
        if early and ctx.lr is not None:
            blew = f"{self.key} blew up early ({self.start:.4g} at the start, {self.ema:.4g} now)"
            if ctx.rate.verdict in ("usual", "low"):
                return [self._blew_at_usual_rate(step, evidence, blew, ctx)]
            return [
                Finding(
                    "lr_too_high",
                    "critical",
                    step,
                    self.best_step,
                    evidence,
                    f"{blew} with lr={ctx.lr:.3g}: the learning rate is too high",
                    f"lower the learning rate 10x (restart with lr around {ctx.lr / 10:.2g}), or add warm-up "
                    "and gradient clipping",
                )
            ]
        # A loss that had learnt and then jumped at once (one point 10x its start) broke on something
        # that step brought, a batch most often; one that climbs back slowly has too large a step.
        sudden = exploded and not early
        return [
            Finding(
                "divergence",
                "critical",
                step,
                self.best_step,
                {**evidence, "sudden": sudden},
                f"{self.key} is diverging: {self.ema:.4g} now against a best of {self.best:.4g} at step "
                f"{self.best_step} (it started at {self.start:.4g})"
                + (f", jumping to {value:.4g} at once" if sudden else ""),
                "check the batch near this step for huge values or NaN in the inputs and labels and skip it, "
                "restore the last good checkpoint, add gradient clipping; lower the learning rate if it "
                "climbs again"
                if sudden
                else "lower the learning rate 3-10x (or restore the last good checkpoint), add gradient "
                "clipping, check the inputs and that gradients are zeroed every step",
            )
        ]

    def _blew_at_usual_rate(self, step: int, evidence: dict[str, object], what: str, ctx: Context) -> Finding:
        """A loss that blew up early although its learning rate is a usual one: a step of that size
        does not blow up by itself, so the code comes first. Gradients never zeroed add up, and the
        steps grow with them; a loss that started far above ln(C) was fed unnormalised inputs."""
        rate = ctx.rate
        assert self.start is not None and rate.lr is not None
        unscaled = bool(ctx.classes) and self.start > self.t.start_ratio * math.log(ctx.classes or 2)
        zero = (
            "check that the gradients are zeroed every step (optimizer.zero_grad() before each backward: "
            "without it they add up and every step is larger than the last)"
        )
        normalise = "normalise the inputs (mean 0, std 1 per channel)"
        first, then = (normalise, zero) if unscaled else (zero, normalise)
        return Finding(
            "divergence",
            "critical",
            step,
            self.best_step,
            {**evidence, "lr_verdict": rate.verdict},
            f"{what} although lr={rate.lr:.3g} is within {rate.span()}: a step of that size does not "
            "blow up by itself",
            f"{first}; {then}; if both are right, clip gradients or lower the learning rate",
        )

    def _initial(self, step: int, ctx: Context) -> list[Finding]:
        """A cross-entropy that starts far above ln(classes): unnormalised inputs or a bad initialisation.

        A loss logged per epoch starts with the first epoch's mean, which an untrained classifier keeps
        below ln(C) as it learns; one far above it rose during that epoch: the learning rate."""
        assert self.start is not None
        classes = ctx.classes
        if self.component or not classes:
            return []
        chance = math.log(classes)
        if not ctx.dense and ctx.lr is not None and self.start > self.t.first_epoch_ratio * chance:
            evidence = {
                "metric": self.key,
                "first_epoch_mean": r4(self.start),
                "ln_classes": r4(chance),
                "lr": ctx.lr,
            }
            rose = (
                f"{self.key} averaged {self.start:.4g} over the first epoch, {self.start / chance:.1f}x "
                f"the ln({classes}) = {chance:.3g} of an untrained model: the loss rose while it trained"
            )
            if ctx.rate.verdict in ("usual", "low"):
                return [self._blew_at_usual_rate(step, evidence, rose, ctx)]
            return [
                Finding(
                    "lr_too_high",
                    "critical",
                    step,
                    0,
                    evidence,
                    f"{rose}: the learning rate is too high (lr={ctx.lr:.3g})",
                    f"lower the learning rate 10x (to {ctx.lr / 10:.2g}), add warm-up; if the inputs are not "
                    "normalised, normalise them",
                )
            ]
        if self.start <= self.t.start_ratio * chance:
            return []
        high = ctx.rate.verdict == "high"
        return [
            Finding(
                "bad_initial_loss",
                "warning",
                step,
                0,
                {"metric": self.key, "start": r4(self.start), "ln_classes": r4(chance), "classes": classes},
                f"{self.key} starts at {self.start:.4g}, {self.start / chance:.1f}x the ln({classes}) = "
                f"{chance:.3g} an untrained classifier gives"
                + (ctx.rate.judged() + ": the first steps may have raised it" if high else ""),
                # the start is the mean of the first points: a rate far too high can raise it within them
                (ctx.rate.lower() + "; then " if high else "")
                + "normalise the inputs (mean 0, std 1 per channel), check the initialisation and the scale "
                "of the last layer's outputs",
            )
        ]

    def _chance(self, step: int, ctx: Context) -> list[Finding]:
        assert self.ema is not None and ctx.classes
        chance = math.log(ctx.classes)
        # the smoothed loss carries about a quarter of the per-batch deviation: tolerate that, no more
        near = abs(self.ema - chance) <= max(self.t.chance_tolerance * chance, 0.5 * self.mad)
        if self.fits(ctx):
            near = False  # a validation score well above chance says the model learned something
        self.at_chance = self.at_chance + 1 if near else 0
        enough = self.t.chance_points if ctx.dense else self.t.chance_evals
        if not ctx.trained or self.at_chance < max(enough // 2, 2):
            return []
        return [
            stuck(
                step,
                self.key,
                f"{self.key} stays at {self.ema:.4g} ~ ln({ctx.classes}) = {chance:.4g}",
                {
                    "metric": self.key,
                    "smoothed": r4(self.ema),
                    "ln_classes": r4(chance),
                    "classes": ctx.classes,
                },
                ctx.rate,
            )
        ]

    def _plateau(self, step: int, ctx: Context) -> list[Finding]:
        """A loss that stopped improving; if it stopped high for a classifier, the model underfits."""
        assert self.ema is not None and self.start is not None
        window = min(self.t.plateau_window, self.n // 2)
        old_step, old = self.history[-window - 1]
        gain = (old - self.ema) / max(abs(old), 1e-12)
        if gain >= self.t.plateau_gain or self.ema < 0.02 * self.start or self.ema > 1.5 * self.start:
            return []  # still improving, or converged, or diverged (divergence's, not this)
        out = [
            Finding(
                "plateau",
                "info",
                step,
                old_step,
                {
                    "metric": self.key,
                    "relative_gain": r4(gain),
                    "window": window,
                    "smoothed": r4(self.ema),
                    "lr": ctx.lr,
                },
                f"{self.key} improved {100 * gain:.2g} % over the last {step - old_step} steps"
                + (ctx.rate.judged() if ctx.rate.verdict == "low" else ""),
                plateau_fix(ctx.rate),
            )
        ]
        out += self.underfit(step, ctx, "stopped improving")
        return out

    def fits(self, ctx: Context) -> bool:
        """A validation score says the model fits (then a high loss is neither chance nor underfitting)."""
        return ctx.score is not None and ctx.score >= self.t.fitted_quality

    def improving(self) -> bool:
        """Still falling by 10 % or more over the recent window: a run that is still learning."""
        assert self.ema is not None
        window = min(self.t.plateau_window, self.n // 2)
        if window < 2:
            return True
        old = self.history[-window - 1][1]
        return (old - self.ema) / max(abs(old), 1e-12) >= 0.1

    def underfit(self, step: int, ctx: Context, why: str) -> list[Finding]:
        """A loss still high when training has slowed or ended: above `underfit_level` of ln(C) for a
        cross-entropy, of its own start for any other loss; unless a validation score says the model
        fits, or the training loss is raised on purpose (mixup, label smoothing)."""
        assert self.ema is not None and self.start is not None
        if self.fits(ctx) or self.component or (ctx.regularised and ctx.classes):
            return []
        if self.cross_entropy(ctx.classes):
            assert ctx.classes
            reference, what = math.log(ctx.classes), f"ln({ctx.classes}) = {math.log(ctx.classes):.3g}"
        elif ctx.classes:
            return []  # a classifier's loss that is no cross-entropy: no scale to judge it by
        else:
            reference, what = self.start, f"its start {self.start:.4g}"
        level = self.ema / max(reference, 1e-12)
        if level <= self.t.underfit_level or (ctx.classes and level > 1 - self.t.chance_tolerance):
            return []  # fits, or at chance (stuck_at_chance's)
        return [
            Finding(
                "underfitting",
                "warning",
                step,
                self.best_step,
                {
                    "metric": self.key,
                    "smoothed": r4(self.ema),
                    "reference": r4(reference),
                    "level": r4(level),
                },
                f"{self.key} {why} at {self.ema:.4g}, {100 * level:.0f} % of {what}: "
                "the model underfits, it does not fit even its training data"
                + (ctx.rate.judged() if ctx.rate.verdict == "low" else ""),
                (ctx.rate.higher() + "; then " if ctx.rate.verdict == "low" else "")
                + "a bigger model, unfreeze the backbone, train longer or with a higher learning rate, or "
                "less regularisation (weight decay, dropout, augmentation)",
            )
        ]


def plateau_fix(rate: Rate) -> str:
    """A flat loss: below its optimiser's range, raise the rate; else a schedule step or stopping
    (and raising it only where no rate was logged to say it is not tiny)."""
    if rate.verdict == "low":
        return rate.higher()
    if rate.verdict is None:
        return (
            "if it is not done: lower the learning rate (a schedule step), or raise it if it has been "
            "tiny throughout; otherwise stop early"
        )
    return "if it is not done: lower the learning rate (a schedule step); otherwise stop early"


def stuck(step: int, key: str, what: str, evidence: dict[str, object], rate: Rate) -> Finding:
    """The model predicts every class alike: from a loss at ln(C) or an accuracy at 1/C.

    Which fix comes first depends on the learning rate: below its optimiser's range it is the
    cause; far above, too; inside it, something keeps the gradients from the first layers."""
    verdict = rate.verdict
    if verdict == "low":
        said, fix = rate.judged(), rate.higher() + "; then check that the labels match the inputs"
    elif verdict == "high":
        said, fix = rate.judged(), rate.lower() + ", add warm-up"
    elif verdict == "usual":
        # the fix leads with what to do: told the rate first, a small model changes the rate
        said = f", at a usual learning rate (lr={rate.lr:.3g}, within {rate.span()})"
        fix = (
            "add batch normalisation, use ReLU-family activations and a standard (Kaiming) initialisation: "
            "the gradients may not reach the first layers (saturated sigmoid or tanh layers, ReLUs that "
            "output zero); check that no layer you mean to train is frozen, that the loss gets raw logits "
            "(no softmax before CrossEntropyLoss) and that the labels match the inputs; the step size is "
            "not the likely cause"
        )
    else:
        said = ""
        fix = (
            "check that the labels match the inputs and the data is shuffled, the learning rate (too low or "
            "far too high), the initialisation, and that gradients reach the first layers"
        )
    return Finding(
        "stuck_at_chance",
        "warning",
        step,
        0,
        {**evidence, "lr_verdict": verdict},
        f"{what}: the model predicts every class equally, it has learned nothing{said}",
        fix,
    )
