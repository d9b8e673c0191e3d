"""Spike-preserving downsampling: min and max of each step bucket, plus the latest point.

A chart 1000 pixels wide cannot show a million points, but it must still show the one step where
the loss spiked. Each bucket keeps its lowest and highest point (in step order), so every extreme
survives; the latest point is always kept so the live end of a curve is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainpilot.events import Point


def bucket_width(first_step: int, last_step: int, max_points: int) -> int:
    """Steps per bucket so that two points per bucket, plus the latest, fit in `max_points`."""
    buckets = max(1, (max_points - 1) // 2)
    span = last_step - first_step + 1
    return max(1, -(-span // buckets))


def downsample(points: Sequence[Point], max_points: int) -> list[Point]:
    """Points (sorted by step) reduced to at most `max_points`."""
    if len(points) <= max_points:
        return list(points)
    if max_points < 3:
        return [points[-1]] if max_points == 1 else [points[0], points[-1]][:max_points]
    width = bucket_width(points[0].step, points[-1].step, max_points)
    first = points[0].step
    out: list[Point] = []
    lo = hi = points[0]
    bucket = 0
    for p in points:
        b = (p.step - first) // width
        if b != bucket:
            out.extend(ordered(lo, hi))
            lo = hi = p
            bucket = b
        elif p.value < lo.value:
            lo = p
        elif p.value > hi.value:
            hi = p
    out.extend(ordered(lo, hi))
    if out[-1] is not points[-1]:
        out.append(points[-1])
    return out


def ordered(lo: Point, hi: Point) -> tuple[Point, ...]:
    """A bucket's lowest and highest point in step order; one point where they are the same."""
    if lo.event_id == hi.event_id and lo.step == hi.step:
        return (lo,)
    return (lo, hi) if (lo.step, lo.event_id) <= (hi.step, hi.event_id) else (hi, lo)
