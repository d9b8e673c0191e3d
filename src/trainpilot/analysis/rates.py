"""Whether a run's learning rate is low, usual or high for its optimiser: what orders a finding's fixes.

A curve alone does not tell a too-large step from gradients that pile up (a forgotten
``zero_grad``) or inputs that were never normalised, nor a too-small step from a network whose
gradients never reach its first layers. The learning rate the run chose, set against the range its
optimiser is used with, does: a loss that blows up at SGD lr 10 has its cause named, one that blows
up at lr 0.05 points at the code first. The ranges are wide on purpose (SGD 1e-3..0.5, the Adam
family 1e-5..1e-2); a rate inside one is called usual, never right.
"""

from __future__ import annotations

from dataclasses import dataclass

USUAL: dict[str | None, tuple[float, float]] = {
    "sgd": (1e-3, 0.5),
    "adam": (1e-5, 1e-2),
    None: (1e-5, 0.1),  # optimiser unknown: only what is outside every optimiser's range is judged
}
_NAMES = {"sgd": "SGD's usual", "adam": "Adam's usual", None: "the usual range"}


@dataclass(frozen=True)
class Rate:
    """The learning rate a run chose (its peak: a schedule decays it late) and its optimiser."""

    lr: float | None = None
    optimiser: str | None = None

    @property
    def verdict(self) -> str | None:
        """``low``, ``usual`` or ``high``; None when no learning rate was logged."""
        if self.lr is None:
            return None
        low, high = USUAL.get(self.optimiser, USUAL[None])
        return "low" if self.lr < low else "high" if self.lr > high else "usual"

    def span(self) -> str:
        """The range in words: "SGD's usual 0.001-0.5"."""
        low, high = USUAL.get(self.optimiser, USUAL[None])
        return f"{_NAMES.get(self.optimiser, _NAMES[None])} {low:g}-{high:g}"

    def judged(self) -> str:
        """What a finding adds to its message: the rate, where it is outside its range."""
        if self.verdict == "low":
            return f"; the learning rate is too low (lr={self.lr:.3g}, below {self.span()})"
        if self.verdict == "high":
            return f"; the learning rate is too high (lr={self.lr:.3g}, above {self.span()})"
        return ""

    def lower(self) -> str:
        return f"lower the learning rate 10x (to {(self.lr or 0) / 10:.2g})"

    def higher(self) -> str:
        return f"raise the learning rate 10x (to {10 * (self.lr or 0):.2g}) or more, into {self.span()}"
