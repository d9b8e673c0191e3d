"""Gradient norms: explosion against their own recent median, a vanishing first layer, all-zero gradients.

Gradient norms swing with the learning-rate schedule (warm-up, OneCycle) and with every hard batch,
so one large value says little: an explosion is a norm far above its recent median that stays there
for several points, or one that comes with the loss rising. While the learning rate is still
climbing (warm-up) the baseline is moving and nothing is judged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from trainpilot.analysis.findings import Finding, Thresholds, r4
from trainpilot.analysis.trend import median


@dataclass
class GradTracker:
    t: Thresholds
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    lrs: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    first: float | None = None
    last: float | None = None
    high: int = 0  # consecutive points far above the baseline
    baseline: float | None = None
    seen: int = 0
    vanishing: int = 0
    zero: int = 0

    def observe(
        self, step: int, key: str, which: str | None, value: float, lr: float | None, loss_rising: bool
    ) -> list[Finding]:
        out: list[Finding] = []
        if which == "first":
            self.first = value
        elif which == "last":
            self.last = value
        else:
            out += self._explosion(step, key, value, lr, loss_rising)
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
                        "lower the learning rate, use LeakyReLU/GELU or a better initialisation, check that "
                        "parameters require grad",
                    )
                )
        if which is not None and self.first is not None and self.last is not None and self.last > 0:
            out += self._vanishing(step)
        return out

    def known(self) -> bool:
        return self.first is not None or len(self.recent) > 0

    def flowing(self) -> bool:
        """Gradients reach the first layers and are not zero (as far as the run logs them)."""
        if self.vanishing > 0 or self.zero > 0:
            return False
        return not (self.first is not None and self.last and self.first / self.last < 1e-2)

    def _explosion(
        self, step: int, key: str, value: float, lr: float | None, loss_rising: bool
    ) -> list[Finding]:
        warming_up = lr is not None and len(self.lrs) >= 10 and lr > 1.5 * self.lrs[0]
        if lr is not None:
            self.lrs.append(lr)
        self.seen += 1
        if len(self.recent) >= 30 and (self.baseline is None or self.seen % 4 == 0 or self.high):
            self.baseline = median(self.recent)  # a median of 50 moves slowly: every few points will do
        baseline = self.baseline if len(self.recent) >= 30 else None
        self.recent.append(value)
        if baseline is None or baseline <= 0 or warming_up:
            self.high = 0
            return []
        ratio = value / baseline
        self.high = self.high + 1 if ratio > self.t.grad_explode_ratio else 0
        if not (self.high >= self.t.grad_persist or (self.high and loss_rising)):
            return []
        self.high = 0
        return [
            Finding(
                "exploding_gradient",
                "critical",
                step,
                step,
                {
                    "metric": key,
                    "value": r4(value),
                    "recent_median": r4(baseline),
                    "loss_rising": loss_rising,
                },
                f"gradient norm {value:.4g} is {ratio:.0f}x its recent median {baseline:.4g}"
                + (" and the loss is rising" if loss_rising else f", for {self.t.grad_persist} points"),
                "clip gradients (e.g. max norm 1.0), lower the learning rate, check for bad inputs or a loss "
                "that can reach log(0)",
            )
        ]

    def _vanishing(self, step: int) -> list[Finding]:
        assert self.first is not None and self.last
        ratio = self.first / self.last
        self.vanishing = self.vanishing + 1 if ratio < self.t.vanishing_ratio else 0
        if self.vanishing != self.t.persist:
            return []
        return [
            Finding(
                "vanishing_gradient",
                "warning",
                step,
                step - self.t.persist,
                {"first_layer": r4(self.first), "last_layer": r4(self.last), "ratio": r4(ratio)},
                f"the first layer's gradient is {ratio:.1e} of the last layer's: it barely learns (vanishing "
                "gradients)",
                "use ReLU-family activations instead of sigmoid/tanh, batch normalisation, residual "
                "connections, or a better initialisation",
            )
        ]
