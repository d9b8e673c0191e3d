"""The analysis engine: routes each run's metrics to the detectors, and says each problem once.

`RunAnalysis.observe(step, metrics)` is incremental (constant work per point); feeding a whole
history point by point gives the same findings as feeding it live, which is how a server rebuilds
a run's analysis after a restart (server/insights.py). `Analyzer` keeps one per run for the
server, which stores what it finds as ``insight`` events. A finding is said once per run (a spike
up to five times), not at all once a finding that explains it was said (`CAUSES`), and no louder
than the policy allows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from trainpilot.analysis.classes import (
    PerClass,
    classes_from_config,
    classes_from_start,
    optimiser,
    regularised,
)
from trainpilot.analysis.findings import CAUSES, Finding, Thresholds, r4
from trainpilot.analysis.gradients import GradTracker
from trainpilot.analysis.loss import Context, LossTracker
from trainpilot.analysis.names import Role, grad_layer, per_class, role, score_kind, time_scale, words
from trainpilot.analysis.pace import InputShareTracker, PaceTracker
from trainpilot.analysis.policy import POLICY
from trainpilot.analysis.rates import Rate
from trainpilot.analysis.validation import AccuracyTracker, Quality, ValLossTracker, broke
from trainpilot.events import Event, NewEvent

REPEATABLE = {"loss_spike": 5}  # kinds that may recur, at most this many times, 100 steps apart
SEVERITY = {"info": 0, "warning": 1, "critical": 2}


class Route(NamedTuple):
    """What the engine needs to know of a metric name, worked out once per name."""

    role: Role
    layer: str | None  # 'first' | 'last' for a layer's gradient norm
    class_name: str | None  # for a per-class accuracy
    unit: float  # seconds per unit of a time
    score: str | None  # the kind of higher-is-better score (map, iou ...)
    epoch_counter: bool  # ``epoch``, ``train/epoch``
    per_epoch: bool  # the name says it is logged per epoch (``train_loss_epoch``)


def route(key: str) -> Route:
    named = words(key)
    return Route(
        role(key),
        grad_layer(key),
        per_class(key),
        time_scale(key),
        score_kind(key),
        [w for w in named if w not in ("train", "training")] == ["epoch"],
        "epoch" in named,
    )


class RunAnalysis:
    def __init__(
        self,
        thresholds: Thresholds | None = None,
        config: Mapping[str, Any] | None = None,
        policy: Mapping[str, str] | None = None,
    ) -> None:
        self.t = thresholds or Thresholds()
        self.policy = POLICY if policy is None else policy
        self.stated_classes = classes_from_config(dict(config or {}))
        self.regularised = regularised(dict(config or {}))
        self.optimiser = optimiser(dict(config or {}))
        self.percent: set[str] = set()
        self.judged_start: set[str] = set()  # losses whose early progress was judged (once each)
        self.inferred_classes: int | None = None
        self.losses: dict[str, LossTracker] = {}
        self.vals: dict[str, ValLossTracker] = {}
        self.quality = Quality()
        self.accuracy = AccuracyTracker(self.t)
        self.early_acc: list[float] = []
        self.paces: dict[str, PaceTracker] = {}
        self.input_share: InputShareTracker | None = None  # once a data-loading time is seen
        self.grads = GradTracker(self.t)
        self.per_class = PerClass(self.t)
        self.lr: float | None = None
        # the learning rate chosen, its peak (a schedule decays it late), against its optimiser's range
        self.rate = Rate(None, self.optimiser)
        self.decayed = False  # the learning rate fell below a tenth of its peak: training nears its end
        self.epoch: float | None = None
        self.epochs_seen = 0
        self.val_evals = 0  # evaluations of the most evaluated validation loss
        self.said: dict[str, tuple[int, int]] = {}  # kind -> (times, last step)
        self.explained: set[str] = set()
        self.non_finite: set[str] = set()
        self.routes: dict[str, Route] = {}

    @property
    def classes(self) -> int | None:
        return (
            self.stated_classes
            or (len(self.per_class.latest) if len(self.per_class.latest) >= 3 else None)
            or self.inferred_classes
        )

    def observe(self, step: int, metrics: Mapping[str, float | None]) -> list[Finding]:
        found = self._non_finite(step, metrics)
        routes = self.routes
        known = [
            (k, v, routes.get(k) or routes.setdefault(k, route(k)))
            for k, v in metrics.items()
            if v is not None and math.isfinite(v)
        ]
        self._bookkeeping(known)
        class_scores: dict[str, float] = {}
        for key, value, (named, layer, class_name, unit, score, _, _) in known:
            split, quantity, base, component = named
            if class_name is not None:
                class_scores[class_name] = value
            elif quantity == "loss" and split != "val":
                found += self._train_loss(step, key, value, component)
            elif quantity == "loss":
                tracker = self.vals.setdefault(key, ValLossTracker(key, self.t))
                found += tracker.observe(step, value, self._train_level(base), self.quality, self.rate)
                self.val_evals = max(self.val_evals, tracker.evals)
            elif quantity == "acc" and split == "val":
                value = self._fraction(key, value)
                self.quality.observe(key, value, "acc")
                if key == self.quality.key and self.quality.collapsed(self.t.collapse_drop):
                    found.append(
                        broke(
                            step,
                            {"metric": key, "value": r4(value), "best": r4(self.quality.best)},
                            f"{key} fell to {value:.3g} from its best {self.quality.best:.3g}",
                            self.rate,
                        )
                    )
                found += self.accuracy.observe_val(
                    step,
                    key,
                    value,
                    self.quality,
                    self.classes,
                    self._trained(),
                    self.regularised,
                    self.rate,
                )
            elif quantity == "acc":
                value = self._fraction(key, value)
                found += self.accuracy.observe_train(step, key, value, self.classes)
                if len(self.early_acc) < 5:
                    self.early_acc.append(value)
            elif layer is not None or quantity == "grad_norm":
                found += self.grads.observe(step, key, layer, value, self.lr, self._loss_rising())
            elif quantity == "data_time" and split != "val":
                self.input_share = self.input_share or InputShareTracker(self.t, key)
                found += self.input_share.observe(step, "data", value * unit)
            elif quantity in ("step_time", "throughput") and split != "val":
                if quantity == "step_time" and self.input_share is not None:
                    found += self.input_share.observe(step, "step", value * unit)
                if self.input_share is None:  # without data time, a slowing step is the best clue
                    pace = self.paces.setdefault(key, PaceTracker(key, self.t, quantity == "step_time"))
                    found += pace.observe(step, value)
            elif split != "train" and score is not None:  # YOLO's metrics/mAP50(B) ...
                self.quality.observe(key, self._fraction(key, value), score)
                if key == self.quality.key:
                    found += self.accuracy.observe_score(step, key, self.quality, self._trained(), self.rate)
        if class_scores:
            found += self.per_class.observe(step, class_scores, self.quality.stalled())
        return [f for f in map(self._capped, found) if self._news(f)]

    def insights(self, event: Event) -> list[NewEvent]:
        """The insight events found in one stored event of the run: none unless metrics at a step."""
        if event.kind != "metrics" or event.step is None:
            return []
        return [
            NewEvent(event.run_id, "insight", f.as_data(), ts=event.ts, step=f.step)
            for f in self.observe(event.step, event.data)
        ]

    def _bookkeeping(self, known: list[tuple[str, float, Route]]) -> None:
        """The learning rate and its peak, and the epoch counter (how often losses come per epoch)."""
        for _, value, r in known:
            if r.role.quantity == "lr":
                self.lr = value
                peak = value if self.rate.lr is None else max(self.rate.lr, value)
                if peak != self.rate.lr:
                    self.rate = Rate(peak, self.optimiser)
                self.decayed = self.decayed or value < 0.1 * peak
            elif r.epoch_counter:
                if math.floor(value) != self.epoch:  # Hugging Face counts fractions of epochs
                    self.epoch = math.floor(value)
                    self.epochs_seen += 1

    def _fraction(self, key: str, value: float) -> float:
        """Accuracies and scores as fractions: timm and others log percent (``eval_top1`` = 93.4)."""
        if value > 1.5:
            self.percent.add(key)
        return value / 100 if key in self.percent else value

    def _trained(self) -> bool:
        """Training has gone on long enough to call a model that has not moved stuck: `chance_points`
        points of its loss (per-epoch losses: `slow_evals`), or three epochs and 30 points."""
        totals = [t for t in self.losses.values() if not t.component]
        if not totals:
            return self.quality.evals >= self.t.chance_evals
        return any(self._context(t).trained for t in totals)

    def _context(self, tracker: LossTracker) -> Context:
        # several points per epoch, unless the epoch counter moves with every point of this loss, or
        # validation does (Keras and YOLO runs log one point per epoch and no counter), or it says so
        per_epoch = max(self.epochs_seen, self.quality.evals, self.val_evals)
        dense = (
            not (per_epoch >= 2 and tracker.n <= 1.5 * per_epoch) and not self.routes[tracker.key].per_epoch
        )
        score = self.quality.above_chance(self.classes)
        ordered = self.accuracy.class_ordered(self.classes)
        enough = self.t.chance_points if dense else self.t.slow_evals
        trained = tracker.n >= enough or (self.epochs_seen >= 3 and tracker.n >= 20)
        return Context(self.lr, self.classes, dense, score, self.regularised, ordered, trained, self.rate)

    def _train_loss(self, step: int, key: str, value: float, component: bool) -> list[Finding]:
        tracker = self.losses.get(key)
        if tracker is None:
            tracker = self.losses[key] = LossTracker(key, self.t, component=component)
        ctx = self._context(tracker)
        found = tracker.observe(step, value, ctx)
        if tracker.n == 5 and not component and self.inferred_classes is None and tracker.start is not None:
            early = sum(self.early_acc) / len(self.early_acc) if self.early_acc else None
            self.inferred_classes = classes_from_start(tracker.start, early)
        if not component and tracker.key not in self.judged_start and self._context(tracker).trained:
            self.judged_start.add(tracker.key)
            found += self._slow_start(step, tracker)
        if self.decayed and not component and not tracker.improving():
            found += tracker.underfit(step, ctx, "is still high as the learning rate decays")
        return found

    def _slow_start(self, step: int, tracker: LossTracker) -> list[Finding]:
        """A loss that has hardly moved while gradients flow: the step size is the problem.

        Gradients that vanish or are zero point elsewhere (initialisation, activations), so then this
        stays quiet; without gradient metrics it is only an info.
        """
        assert tracker.start is not None and tracker.ema is not None
        moved = (tracker.start - tracker.ema) / max(abs(tracker.start), 1e-12)
        if moved >= self.t.slow_move or tracker.ema > tracker.start * (1 + self.t.slow_move):
            return []
        if not self.grads.flowing():
            return []
        lr = f" with lr={self.lr:.3g}" if self.lr is not None else ""
        # A flat loss alone does not tell a tiny step from a tiny model or a wrong loss: only a learning
        # rate below its optimiser's usual range (rates.USUAL) makes it the cause.
        rate = self.rate
        low = rate.verdict == "low"
        flowing = self.grads.known()
        if low:
            said, fix = rate.judged(), rate.higher()
        elif rate.verdict == "high":  # a step far too large knocks a model flat: dead units, saturation
            said, fix = rate.judged(), rate.lower() + ", add warm-up"
        elif rate.verdict == "usual":
            said = f", within {rate.span()}"
            fix = (
                "check that the layers you mean to train are not frozen (requires_grad=True, "
                "trainable=True), that the model is big enough and that the loss fits the task (raw logits "
                "into CrossEntropyLoss); the step size is not the likely cause: change the learning rate "
                "only if those are right"
                if flowing
                else "add batch normalisation, ReLU-family activations and a standard initialisation (the "
                "gradients may not reach the first layers), or unfreeze the layers you mean to train; the "
                "step size is not the likely cause: change the learning rate only if those are right"
            )
        else:
            said = ""
            fix = (
                "raise the learning rate (try 10x); if it is in the usual range, check that the layers you "
                "mean to train are not frozen, that the model is big enough and the loss fits the task"
            )
        return [
            Finding(
                "lr_too_low",
                "warning" if low else "info",
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
                f"{tracker.key} moved {100 * moved:.1f} % in {tracker.n} points{lr}"
                + (" while gradients flow normally" if flowing else "")
                + said,
                fix,
            )
        ]

    def _train_level(self, base: str) -> float | None:
        """The smoothed training loss a validation loss compares with: the one of the same name
        (``val/box_loss`` with ``train/box_loss``), else the total loss seen most often."""
        same = [t for t in self.losses.values() if t.ema is not None and self.routes[t.key][0].base == base]
        totals = [t for t in self.losses.values() if t.ema is not None and not t.component]
        candidates = same or totals
        return max(candidates, key=lambda t: t.n).ema if candidates else None

    def _was_falling(self) -> bool:
        """Whether the total loss had made progress and was not climbing: what a NaN out of the blue
        (a bad batch, a log(0)) looks like, where a too-large step climbs first."""
        learnt = any(
            t.start is not None and t.start > 0 and t.best < 0.9 * t.start
            for t in self.losses.values()
            if not t.component
        )
        return learnt and not self._loss_rising()

    def _loss_rising(self) -> bool:
        return any(t.rising >= 3 for t in self.losses.values() if not t.component)

    def _non_finite(self, step: int, metrics: Mapping[str, float | None]) -> list[Finding]:
        """NaN/Inf, said once per metric. A non-finite gradient norm with a finite loss is what mixed
        precision's loss scaler produces (and skips): a warning, not an alarm."""
        bad = [
            k for k, v in metrics.items() if (v is None or not math.isfinite(v)) and k not in self.non_finite
        ]
        if not bad:
            return []
        self.non_finite.update(bad)
        only_grads = all(grad_layer(k) is not None or role(k).quantity == "grad_norm" for k in bad)
        # a NaN out of a falling loss, or one at a usual learning rate with no climb before it, came from
        # what that step brought (a batch, a log(0)); after a climb, or at a rate far too high, the step
        falling = self._was_falling()
        data_first = falling or (self.rate.verdict == "usual" and not self._loss_rising())
        return [
            Finding(
                "nan_inf",
                "warning" if only_grads else "critical",
                step,
                step,
                {"metrics": bad, "loss_was_falling": falling},
                f"non-finite value (NaN or Inf) in {', '.join(bad)} at step {step}"
                + (" out of a loss that was falling" if falling else ""),
                (
                    "check the batch at this step for NaN or Inf in the inputs and labels (torch.isfinite, "
                    "torch.autograd.set_detect_anomaly) and skip bad batches; guard the loss against log(0) "
                    "or division by zero; a loss that falls until it breaks points at the data, not the "
                    "learning rate"
                    if data_first and not only_grads
                    else "lower the learning rate, clip gradients, or check the input data and the loss for "
                    "log(0) or division by zero"
                )
                + (
                    "; with mixed precision, skipped steps show as an infinite gradient norm"
                    if only_grads
                    else ""
                ),
            )
        ]

    def _news(self, finding: Finding) -> bool:
        """Whether to say it: not explained by something said already, and not said too often."""
        if finding.kind == "nan_inf":
            return True
        if finding.kind in self.explained:
            return False
        times, last = self.said.get(finding.kind, (0, -(10**9)))
        step = finding.step or 0
        if times >= REPEATABLE.get(finding.kind, 1) or (times and step - last < 100):
            return False
        self.said[finding.kind] = (times + 1, step)
        if finding.severity != "info":  # a hint explains nothing away
            self.explained |= CAUSES.get(finding.kind, frozenset())
        return True

    def _capped(self, finding: Finding) -> Finding:
        cap = self.policy.get(finding.kind, finding.severity)
        if SEVERITY[cap] >= SEVERITY[finding.severity]:
            return finding
        return Finding(
            finding.kind,
            cap,
            finding.step,
            finding.start_step,
            finding.evidence,
            finding.message,
            finding.suggestion,
        )


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


def analyze_events(
    events: Iterable[dict[str, Any]],
    thresholds: Thresholds | None = None,
    config: Mapping[str, Any] | None = None,
    policy: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Findings for one run given as envelope-shaped dicts (the `trainpilot analyze` path)."""
    analysis = RunAnalysis(thresholds, config, policy)
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
