"""Throughput: an input pipeline that cannot keep up with the model.

Where the trainer logs how long each step waits for data (``data_time``, ``time/data``,
``dataloader_ms`` ...), that share decides; a data time that grew several-fold since early in the run
counts too. Without it, a step time that doubled against its own early median is the best clue, and
says "may be": a whole step slowing down has other causes (another job on the machine, throttling).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from trainpilot.analysis.findings import Finding, Thresholds, r4

PACE_WINDOW = 30
CHECK_EVERY = 4  # window statistics are recomputed every this many points, not on every one


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
                "recent_median": r4(median),
                "baseline": r4(self.baseline),
                "ratio": r4(ratio),
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
    early: list[float] = field(default_factory=list)  # data times of points 10..40: the loader's own pace

    def observe(self, step: int, which: str, value: float) -> list[Finding]:
        other = self.pending.pop("step" if which == "data" else "data", None)
        if other is None or other[0] != step:
            self.pending[which] = (step, value)
            return []
        self.pairs.append((value, other[1]) if which == "data" else (other[1], value))
        self.seen += 1
        if 10 < self.seen <= 40:
            self.early.append(self.pairs[-1][0])
        if len(self.pairs) < PACE_WINDOW or self.seen % CHECK_EVERY:
            return []  # the medians of a window move slowly: every few steps is soon enough
        share = sorted(d / max(total, 1e-12) for d, total in self.pairs)[PACE_WINDOW // 2]
        data = sorted(d for d, _ in self.pairs)[PACE_WINDOW // 2]
        baseline = sorted(self.early)[len(self.early) // 2] if len(self.early) >= 20 else None
        grew = baseline is not None and self.seen > 40 and data >= 5 * max(baseline, 1e-9)
        if share < self.t.input_share and not (grew and share >= self.t.input_share / 2):
            return []
        total = sorted(t for _, t in self.pairs)[PACE_WINDOW // 2]
        evidence = {"metric": self.key, "data_time": r4(data), "step_time": r4(total), "share": r4(share)}
        if grew and baseline is not None:
            evidence["early_data_time"] = r4(baseline)
        message = (
            f"the training loop waits for data {min(share, 1.0):.0%} of each step "
            f"(medians of the last {PACE_WINDOW} steps: {data:.4g} s of {total:.4g} s"
            + (f"; {data / max(baseline, 1e-9):.0f}x the loader's early pace)" if grew and baseline else ")")
        )
        return [_input_bottleneck(step, evidence, message, "is")]


def _input_bottleneck(step: int, evidence: dict[str, Any], message: str, verdict: str) -> Finding:
    """One finding for both clues (data-time share, step-time trend): the same fault, the same fixes;
    a step that merely got slower is only a hint (an info), a loader seen waiting is a warning."""
    return Finding(
        "input_bottleneck",
        "warning" if verdict == "is" else "info",
        step,
        step - PACE_WINDOW,
        evidence,
        message,
        f"the input pipeline {verdict} the bottleneck: more DataLoader workers, pin_memory, prefetching, "
        "faster storage, or decode/augment on the GPU",
    )
