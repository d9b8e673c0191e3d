"""What a detector says (`Finding`), how sure it may sound (`NATURAL`, `CAUSES`), its knobs (`Thresholds`).

A finding names a kind of problem, the step it was seen at, the numbers that show it and what to
change. Its severity is the detector's own (`NATURAL`), capped by the severity policy (policy.py),
which lets a kind say `warning` or `critical` only where it was right on runs it was not tuned on.
`CAUSES` says which findings are the same problem seen twice: once a run has diverged, its spikes,
its plateau and its validation curve are consequences, not news.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NATURAL: dict[str, str] = {
    "nan_inf": "critical",
    "divergence": "critical",
    "lr_too_high": "critical",
    "exploding_gradient": "critical",
    "loss_spike": "warning",
    "oscillation": "warning",
    "lr_too_low": "warning",
    "stuck_at_chance": "warning",
    "underfitting": "warning",
    "plateau": "info",
    "bad_initial_loss": "warning",
    "overfitting": "warning",
    "vanishing_gradient": "warning",
    "dying_relu": "warning",
    "input_bottleneck": "warning",
    "noisy_labels": "warning",
    "class_weakness": "warning",
    "unshuffled_data": "warning",
}

_CURVE = frozenset(
    {"loss_spike", "oscillation", "plateau", "underfitting", "stuck_at_chance", "lr_too_low", "overfitting"}
)
_AFTERMATH = frozenset(
    {
        "noisy_labels",
        "class_weakness",
        "exploding_gradient",
        "vanishing_gradient",
        "dying_relu",
        "bad_initial_loss",
    }
)
# kind -> the kinds it explains: once it is said, they are not said for the run any more
CAUSES: dict[str, frozenset[str]] = {
    "divergence": _CURVE | _AFTERMATH | {"lr_too_high"},
    "lr_too_high": _CURVE | _AFTERMATH | {"divergence"},
    "exploding_gradient": _CURVE | {"noisy_labels", "class_weakness"},
    "vanishing_gradient": frozenset(
        {"plateau", "underfitting", "stuck_at_chance", "lr_too_low", "dying_relu"}
    ),
    "dying_relu": frozenset(
        {"plateau", "underfitting", "stuck_at_chance", "lr_too_low", "vanishing_gradient"}
    ),
    "stuck_at_chance": frozenset({"plateau", "underfitting", "lr_too_low", "class_weakness", "noisy_labels"}),
    "lr_too_low": frozenset({"plateau", "underfitting", "stuck_at_chance"}),
    "underfitting": frozenset({"plateau"}),
    "oscillation": frozenset({"loss_spike"}),
    "unshuffled_data": _CURVE | {"lr_too_high", "divergence", "noisy_labels", "class_weakness"},
}


@dataclass(frozen=True)
class Thresholds:
    """Every constant a detector compares with; each is a ratio to the curve's own scale or a count.

    The ones evaluate.TUNABLE lists are chosen on the corpus, held out group by group."""

    warmup: int = 20  # points ignored by spike/divergence detection: the first steps are noisy by nature
    divergence_ratio: float = 3.0  # smoothed loss this many times above its best (and above its start)
    explode_ratio: float = 10.0  # a raw loss this many times its starting level
    early_rise: float = 1.5  # smoothed loss this many times its start, rising, before any progress
    spike_sigmas: float = 10.0  # a point this many mean-absolute-deviations above the smoothed loss
    spike_floor: float = 2.0  # ... and at least this fraction of the smoothed level above it
    oscillation_spikes: int = 4  # this many spikes within `oscillation_window` points
    oscillation_window: int = 200
    val_jump: float = 5.0  # one evaluation's loss this many times every earlier one's: the model broke
    collapse_drop: float = 0.7  # ... or a validation score losing this share of its best at once
    val_swing: float = 0.8  # validation loss swinging by this share of its level, up and down, 3 times
    plateau_window: int = 300  # under `plateau_gain` relative improvement over half the points seen,
    plateau_min: int = 40  # ... at most this many, at least this many
    plateau_gain: float = 0.01
    underfit_level: float = 0.5  # a loss still above this fraction of ln(classes) late in training
    chance_tolerance: float = 0.05  # loss within this share of ln(classes), or accuracy within ...
    chance_acc: float = 1.5  # ... this many times 1/classes
    chance_points: int = 150  # ... for this many points (per-step) or `chance_evals` evaluations
    chance_evals: int = 4
    start_ratio: float = 3.0  # a cross-entropy starting this many times above ln(classes)
    first_epoch_ratio: float = 1.6  # a first epoch's mean cross-entropy this many times ln(classes): it rose
    slow_move: float = 0.02  # a loss that moved less than this share of its start in `chance_points`
    slow_evals: int = 8  # ... or in this many points of a loss logged once per epoch
    overfit_rise: float = 0.10  # validation loss this share above its best ...
    overfit_share: float = 0.25  # ... and by this share of the improvement it had made
    overfit_tau: float = 0.5  # ... rising since its best (Kendall's tau) over at least `overfit_evals`
    overfit_evals: int = 3
    grad_explode_ratio: float = 50.0  # gradient norm this many times its median before ...
    grad_persist: int = 5  # ... held for this many points, or with the loss rising
    vanishing_ratio: float = 1e-3  # first-layer gradient norm below this fraction of the last layer's
    persist: int = 10  # consecutive points a vanishing/zero gradient condition must hold
    bottleneck_ratio: float = 2.0  # step time this many times its early median (or throughput a half)
    input_share: float = 0.5  # where data-loading time is logged: this share of the step waits on it
    noisy_gap: float = 0.35  # validation accuracy this far above a flat training accuracy
    memorise_gap: float = 0.35  # training accuracy near 1 and this far above a stalled validation accuracy
    fitted_quality: float = (
        0.6  # a validation score (accuracy above chance, IoU ...) that rules out underfitting
    )
    weak_class_gap: float = 0.4  # a class this far below the others' mean accuracy, two evaluations running


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


def r4(x: float) -> float:
    """Four significant digits: evidence people read, not noise."""
    return float(f"{x:.4g}")
