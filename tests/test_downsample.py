from __future__ import annotations

from trainpilot.downsample import downsample
from trainpilot.events import Point


def points(values: list[float]) -> list[Point]:
    return [Point(i, v, float(i), i + 1) for i, v in enumerate(values)]


def test_short_series_is_returned_whole() -> None:
    series = points([3.0, 1.0, 2.0])
    assert downsample(series, 10) == series


def test_every_bucket_keeps_its_extremes_and_the_last_point_survives() -> None:
    values = [float(i % 7) for i in range(1000)]
    values[500] = 1e6
    values[501] = -1e6
    out = downsample(points(values), 100)
    assert len(out) <= 100
    assert {p.value for p in out} >= {1e6, -1e6}
    assert out[-1].step == 999
    assert [p.step for p in out] == sorted(p.step for p in out)


def test_tiny_budgets_still_end_at_the_latest_point() -> None:
    series = points([float(i) for i in range(50)])
    assert [p.step for p in downsample(series, 1)] == [49]
    assert [p.step for p in downsample(series, 2)] == [0, 49]
    assert downsample(series, 3)[-1].step == 49 and len(downsample(series, 3)) <= 3
