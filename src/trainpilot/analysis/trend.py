"""Small robust statistics the detectors share: a median and a rank trend test.

Curves are noisy in ways no Gaussian model captures (a batch of hard examples, an evaluation on a
small split), so the detectors compare medians and judge "rising" by ranks (Kendall's tau), never
by a least-squares slope that one outlier can swing.

>>> kendall_tau([1, 2, 3, 4]), kendall_tau([4, 3, 2, 1]), kendall_tau([1, 3, 2, 4])
(1.0, -1.0, 0.6666666666666666)
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def kendall_tau(values: Sequence[float]) -> float:
    """Rank correlation of `values` with their order, from -1 (always falling) to 1 (always rising)."""
    n = len(values)
    if n < 2:
        return 0.0
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            if values[j] > values[i]:
                concordant += 1
            elif values[j] < values[i]:
                discordant += 1
    return (concordant - discordant) / (n * (n - 1) / 2)
