"""Case 4's machinery, tiny: every event reaches every subscriber, and what is missing is counted."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    monkeypatch.syspath_prepend(str(BENCH))
    import case_fanout
    import fanout_worker

    return case_fanout, fanout_worker


@pytest.mark.parametrize("system", ["trainpilot", "floor"])
def test_every_event_reaches_every_subscriber_and_is_counted(
    bench: tuple[ModuleType, ModuleType], system: str, tmp_path: Path
) -> None:
    case, _ = bench
    with case.started(system, str(tmp_path)) as running:
        for transport in ("sse", "ws"):
            (row,) = case.point(running, transport, 3, [(50.0, 10)], 10.0)
            assert row["opened"] == 3 and row["healthy"] == 3
            assert row["deliveries"] == 30 and row["lost"] == 0 and row["reordered"] == 0
            assert row["latency_samples"] == 30 and row["p99_ms"] > 0
            assert row["persisted"] == (10 if system == "trainpilot" else None)


def test_a_cut_off_subscriber_is_unhealthy_and_its_missing_events_are_not_lost(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    _, worker = bench
    args = argparse.Namespace(subscribers=2, transport="sse", port=0, run_id="r-1")
    client: Any = worker.Client(args)
    frame = b'id: %d\nevent: metrics\ndata: {"id":%d,"run_id":"r-1","ts":%f}\n\n'
    for sub in client.subs:
        client.receive(sub, frame % (1, 1, 1.0) + frame % (2, 2, 1.0))
    client.receive(client.subs[1], b'event: resync\ndata: {"last_id":2}\n\n')

    async def wait() -> dict[str, Any]:
        result: dict[str, Any] = await client.wait(3, 0.05)
        return result

    result = asyncio.run(wait())
    assert result["deliveries"] == 4 and result["healthy"] == 1 and result["unhealthy"] == 1
    assert result["lost"] == 1  # the healthy one missed event 3; the cut-off one is counted apart


def test_the_targets_are_judged_from_the_result(bench: tuple[ModuleType, ModuleType]) -> None:
    case, _ = bench

    def row(
        system: str, transport: str, n: int, p99: float, rss: float = 50.0, wrote: float = 20.0
    ) -> dict[str, Any]:
        return {
            "rate": 20.0,
            "emit_rate": wrote,
            "system": system,
            "transport": transport,
            "subscribers": n,
            "p99_ms": p99,
            "server_rss_mb": rss,
            "lost": 0,
            "unhealthy": 0,
        }

    points = [
        row("trainpilot", "sse", 1000, 20.0),
        row("floor", "sse", 1000, 14.0),
        row("trainpilot", "ws", 1000, 40.0),
        row("floor", "ws", 1000, 14.0),
        row("trainpilot", "sse", 5000, 100.0, rss=200.0),
        row("floor", "sse", 5000, 54.0, wrote=7.5),
    ]
    verdicts = case.verdicts({"points": points, "rate": 20.0})
    assert any(v.startswith("SSE at 1,000") and v.endswith(": met") for v in verdicts)
    assert any(v.startswith("WS at 1,000") and v.endswith("NOT met") for v in verdicts)
    assert any(v.startswith("SSE at 5,000") and "not judged" in v for v in verdicts)  # floor lagged
    assert any(v.startswith("SSE server RSS") and v.endswith("NOT met") for v in verdicts)
