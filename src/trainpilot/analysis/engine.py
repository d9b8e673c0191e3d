"""The analysis engine: routes each run's metrics to the detectors, and says each finding once.

`RunAnalysis.observe(step, metrics)` is incremental (constant work per point); feeding a whole
history point by point gives the same findings as feeding it live, which is how a server rebuilds
a run's analysis after a restart (server/insights.py). `Analyzer` keeps one per run for the
server, which stores what it finds as ``insight`` events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from trainpilot.analysis.names import Role, grad_layer, per_class, role
from trainpilot.analysis.rules import (
    Finding,
    GradTracker,
    InputShareTracker,
    LossTracker,
    PaceTracker,
    Thresholds,
    ValTracker,
    weak_classes,
)
from trainpilot.events import Event, NewEvent

REPEATABLE = {"loss_spike": 5}  # kinds that may recur, at most this many times, 100 steps apart


class RunAnalysis:
    def __init__(self, thresholds: Thresholds | None = None, classes: int | None = None) -> None:
        self.t = thresholds or Thresholds()
        self.classes = classes
        self.losses: dict[str, LossTracker] = {}
        self.vals: dict[str, ValTracker] = {}
        self.paces: dict[str, PaceTracker] = {}
        self.input_share: InputShareTracker | None = None  # once a data-loading time is seen
        self.grads = GradTracker(self.t)
        self.lr: float | None = None
        self.train_acc: float | None = None
        self.val_accs = 0
        self.per_class: dict[str, float] = {}
        self.said: dict[str, tuple[int, int]] = {}  # kind -> (times, last step)
        self.non_finite: set[str] = set()
        self.routes: dict[str, tuple[Role, str | None, str | None]] = {}  # key -> role, layer, class

    def observe(self, step: int, metrics: dict[str, float | None]) -> list[Finding]:
        found: list[Finding] = []
        class_update = False
        bad = [
            k for k, v in metrics.items() if (v is None or not math.isfinite(v)) and k not in self.non_finite
        ]
        if bad:  # said once per metric, not once per bad point
            self.non_finite.update(bad)
            found.append(
                Finding(
                    "nan_inf",
                    "critical",
                    step,
                    step,
                    {"metrics": bad},
                    f"non-finite value (NaN or Inf) in {', '.join(bad)} at step {step}",
                    "lower the learning rate, clip gradients, or check the input data and the loss "
                    "for log(0) or division by zero",
                )
            )
        for key, value in metrics.items():
            if value is None or not math.isfinite(value):
                continue
            route = self.routes.get(key) or self.routes.setdefault(
                key, (role(key), grad_layer(key), per_class(key))
            )
            (split, quantity, base, component), layer, class_name = route
            if quantity == "lr":
                self.lr = value
            elif quantity == "loss" and split != "val":
                tracker = self.losses.setdefault(key, LossTracker(key, self.t, component=component))
                classes = None if component else self.classes or _classes_from_start(tracker)
                found += tracker.observe(step, value, self.lr, classes)
                if tracker.n == self.t.chance_after and not component:
                    found += self._slow_start(step, tracker)
            elif quantity == "loss":
                train = self._train_loss(base)
                found += self.vals.setdefault(key, ValTracker(key, self.t)).observe(step, value, train)
            elif quantity == "acc" and split == "val":
                self.val_accs += 1
                found += self._noisy_labels(step, key, value)
            elif quantity == "acc":
                self.train_acc = value if self.train_acc is None else 0.9 * self.train_acc + 0.1 * value
            elif layer is not None or quantity == "grad_norm":
                found += self.grads.observe(step, key, layer, value)
            elif quantity == "data_time" and split != "val":
                self.input_share = self.input_share or InputShareTracker(self.t, key)
                found += self.input_share.observe(step, "data", value)
            elif quantity in ("step_time", "throughput") and split != "val":
                if quantity == "step_time" and self.input_share is not None:
                    found += self.input_share.observe(step, "step", value)
                if self.input_share is None:  # without data time, a slowing step is the best clue
                    pace = self.paces.setdefault(key, PaceTracker(key, self.t, quantity == "step_time"))
                    found += pace.observe(step, value)
            elif class_name is not None:
                self.per_class[class_name] = value
                class_update = True
        if class_update:
            self.classes = self.classes or len(self.per_class)
            found += weak_classes(self.per_class, step, self.t)
        return [f for f in found if f.kind == "nan_inf" or self._first_time(f)]

    def insights(self, event: Event) -> list[NewEvent]:
        """The insight events found in one stored event of the run: none unless metrics at a step."""
        if event.kind != "metrics" or event.step is None:
            return []
        return [
            NewEvent(event.run_id, "insight", f.as_data(), ts=event.ts, step=f.step)
            for f in self.observe(event.step, event.data)
        ]

    def _slow_start(self, step: int, tracker: LossTracker) -> list[Finding]:
        """A loss that has hardly moved while gradients flow normally: the step size is the problem.

        Gradients that vanish or are zero point elsewhere (initialisation, activations), so then this
        stays quiet; without gradient metrics it is only an info.
        """
        assert tracker.start is not None and tracker.ema is not None
        moved = (tracker.start - tracker.ema) / max(abs(tracker.start), 1e-12)
        if moved >= 0.05 or tracker.ema > tracker.start * 1.05:
            return []
        grads_known = self.grads.first is not None or len(self.grads.recent) > 0
        if (
            self.grads.vanishing > 0
            or self.grads.zero > 0
            or (
                self.grads.first is not None and self.grads.last and self.grads.first / self.grads.last < 1e-2
            )
        ):
            return []
        lr = f" with lr={self.lr:.3g}" if self.lr is not None else ""
        return [
            Finding(
                "lr_too_low",
                "warning" if grads_known else "info",
                step,
                0,
                {
                    "metric": tracker.key,
                    "start": round(tracker.start, 4),
                    "smoothed": round(tracker.ema, 4),
                    "relative_change": round(moved, 4),
                    "points": tracker.n,
                    "lr": self.lr,
                },
                f"{tracker.key} moved {100 * moved:.1f} % in {tracker.n} steps{lr} "
                "while gradients flow normally",
                "raise the learning rate (try 10x), or check that the optimizer steps (zero_grad/step order)",
            )
        ]

    def _train_loss(self, base: str) -> float | None:
        """The smoothed training loss a validation loss compares with: the one of the same name
        (``val/box_loss`` with ``train/box_loss``), else the total loss seen most often."""
        same = [t for t in self.losses.values() if t.ema is not None and self.routes[t.key][0].base == base]
        totals = [t for t in self.losses.values() if t.ema is not None and not t.component]
        candidates = same or totals
        return max(candidates, key=lambda t: t.n).ema if candidates else None

    def _noisy_labels(self, step: int, key: str, value: float) -> list[Finding]:
        if self.val_accs < 2 or self.train_acc is None or value < 0.5 or self.train_acc > value - 0.15:
            return []
        return [
            Finding(
                "noisy_labels",
                "warning",
                step,
                step,
                {"val_metric": key, "val_acc": round(value, 4), "train_acc": round(self.train_acc, 4)},
                f"training accuracy {self.train_acc:.2f} is well below validation accuracy {value:.2f}: "
                "the model cannot fit its own training labels",
                "look for noisy or wrong training labels (or augmentation so strong it changes the class)",
            )
        ]

    def _first_time(self, finding: Finding) -> bool:
        times, last = self.said.get(finding.kind, (0, -(10**9)))
        limit = REPEATABLE.get(finding.kind, 1)
        step = finding.step or 0
        if times >= limit or (times and step - last < 100):
            return False
        self.said[finding.kind] = (times + 1, step)
        return True


def _classes_from_start(tracker: LossTracker) -> int | None:
    """Classes guessed from a cross-entropy that starts at ln(C), as an untrained classifier's does."""
    if tracker.start is None or tracker.n < 5 or not 0.5 < tracker.start < 12:
        return None
    guess = round(math.exp(tracker.start))
    return guess if guess >= 2 and abs(math.exp(tracker.start) - guess) <= 0.1 * guess else None


class Analyzer:
    """One RunAnalysis per run, fed with stored events; returns the insight events to store."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.runs: dict[str, RunAnalysis] = {}

    def observe(self, events: Iterable[Event]) -> list[NewEvent]:
        out = []
        for event in events:
            if event.kind != "metrics" or event.step is None:
                continue
            analysis = self.runs.get(event.run_id)
            if analysis is None:
                analysis = self.runs[event.run_id] = RunAnalysis(self.thresholds)
            out += analysis.insights(event)
        return out


def analyze_events(events: Iterable[dict[str, Any]], thresholds: Thresholds | None = None) -> list[Finding]:
    """Findings for one run given as envelope-shaped dicts (the `trainpilot analyze` path)."""
    analysis = RunAnalysis(thresholds)
    found: list[Finding] = []
    ordered = sorted(
        (e for e in events if e.get("kind", "metrics") == "metrics" and e.get("step") is not None),
        key=lambda e: e["step"],
    )
    for event in ordered:
        data = {
            k: number for k, v in (event.get("data") or {}).items() if (number := _number(v)) is not _SKIP
        }
        found += analysis.observe(int(event["step"]), data)
    return found


_SKIP = object()
_MARKERS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "-infinity": -math.inf}


def _number(value: Any) -> Any:
    """A metric value as read from a file: a float; None for the server's null (a NaN it stored) and for
    the wire's ``"nan"``/``"inf"`` markers made floats again; anything else (text, lists) skipped."""
    if isinstance(value, bool):
        return _SKIP
    if isinstance(value, int | float) or value is None:
        return None if value is None else float(value)
    if isinstance(value, str) and value.lower() in _MARKERS:
        return _MARKERS[value.lower()]
    return _SKIP
