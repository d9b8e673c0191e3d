"""Plot helpers for docs/img: matplotlib without a display, and the log-log growth plot of case 7."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files only (imported late: only the report needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, name: str) -> str:
    """Write fig to docs/img/<name>.png; return the path relative to docs/ for a Markdown link."""
    IMG.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(IMG / f"{name}.png", dpi=110)
    pyplot().close(fig)
    return f"img/{name}.png"


def growth(
    name: str, title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]]
) -> str:
    """Case 7: a log-log plot of cost against size, one line per series, so the slope shows the growth."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in series.items():
        points = sorted(p for p in points if p[0] > 0 and p[1] > 0)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save(fig, name)
