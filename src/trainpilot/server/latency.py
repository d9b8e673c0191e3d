"""How long ingested batches take from receipt to durable commit, in fixed buckets.

Recording is one bisect and two additions on the hot path; Prometheus gets the histogram
(`trainpilot_ingest_seconds`), /api/system/info the counts and the bucket bounds that hold the
median and the 99th percentile, so an operator (or bench case 3) reads the server's own figure
rather than a client's round trip.
"""

from __future__ import annotations

import bisect
from typing import Any

BOUNDS_MS = (
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    2000,
    5000,
    10_000,
)
BOUNDS_S = tuple(b / 1000 for b in BOUNDS_MS)


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)  # the last bucket: above every bound
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS_S, seconds)] += 1
        self.sum_s += seconds

    def summary(self) -> dict[str, Any]:
        return {
            "batches": sum(self.counts),
            "p50_ms_at_most": quantile_bound_ms(self.counts, 0.5),
            "p99_ms_at_most": quantile_bound_ms(self.counts, 0.99),
            "bounds_ms": list(BOUNDS_MS),
            "counts": list(self.counts),
        }


def quantile_bound_ms(counts: list[int], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding quantile `q`; None when there is nothing, or when
    it lies above the last bound."""
    total = sum(counts)
    if total == 0:
        return None
    seen = 0
    for bound, count in zip((*BOUNDS_MS, None), counts, strict=True):
        seen += count
        if seen >= q * total:
            return None if bound is None else float(bound)
    return None
