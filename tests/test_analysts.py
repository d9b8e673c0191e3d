"""The live detectors in their own process: the same findings as in the server's, and a child that dies
costs no finding (its runs are replayed from the store into the next one)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from trainpilot.events import NewEvent
from trainpilot.exceptions import ConfigError
from trainpilot.server import analysts
from trainpilot.server.analysts import AnalystLost, InlineAnalyst, ProcessAnalyst, Row
from trainpilot.server.runner import ServerThread, free_port
from trainpilot.settings import Settings

# A loss that falls, then NaN at step 30, and a learning rate far too high from the start.
ROWS: list[Row] = [
    (s, 1000.0 + s, {"train/loss": 2.0 / (s + 1) if s != 30 else math.nan, "lr": 5.0}) for s in range(60)
]


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


def found(events: list[NewEvent]) -> list[tuple[Any, ...]]:
    return [(e.run_id, e.kind, e.ts, e.step, e.data["kind"], e.data["message"]) for e in events]


def test_the_child_finds_what_the_server_process_finds_and_refuses_a_run_it_was_not_told_of() -> None:
    async def body() -> None:
        child, inline = await ProcessAnalyst.open(), InlineAnalyst()
        try:
            for analyst in (child, inline):
                analyst.start("a", {"optimizer": "sgd"})
            rows = [(s, ts, {k: (None if v != v else v) for k, v in m.items()}) for s, ts, m in ROWS]
            answers = [child.feed("a", rows[:20]), child.feed("a", rows[20:])]  # in flight together
            there = [e for done in answers for e in await done]
            here = [e for part in (rows[:20], rows[20:]) for e in await inline.feed("a", part)]
            assert found(there) == found(here) and "nan_inf" in {e.data["kind"] for e in there}
            with pytest.raises(AnalystLost, match="must be started"):
                await child.feed("b", rows)
            child.forget("a")
            with pytest.raises(AnalystLost):
                await child.feed("a", rows)
            assert child.stats == {"started": 1, "lost": 0}
        finally:
            await child.close()
        assert child.process is None or child.process.returncode == 0

    run(body)


def test_a_child_that_dies_fails_what_waits_on_it_and_another_takes_its_place() -> None:
    async def body() -> None:
        child = await ProcessAnalyst.open()
        try:
            assert child.process is not None
            child.start("a", {})
            os.kill(child.process.pid, signal.SIGKILL)
            with pytest.raises(AnalystLost, match="exited"):
                await child.feed("a", [(0, 0.0, {"loss": 1.0})])
            for _ in range(300):
                if child.stats["started"] == 2 and child.process is not None:
                    break
                await asyncio.sleep(0.02)
            assert child.stats == {"started": 2, "lost": 1}
            with pytest.raises(AnalystLost, match="must be started"):  # it knows nothing of the old runs
                await child.feed("a", [(1, 1.0, {"loss": 1.0})])
        finally:
            await child.close()

    run(body)


def test_a_child_that_stops_reading_holds_ingest_back_boundedly_then_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A detector that never returns: requests queue up to the write-ahead bound, the next `ready()`
    waits STUCK_S for the child to read, then kills it and another one starts."""
    monkeypatch.setattr(analysts, "STUCK_S", 0.5)

    async def body() -> None:
        child = await ProcessAnalyst.open()
        try:
            assert child.process is not None
            child.start("a", {})
            os.kill(child.process.pid, signal.SIGSTOP)  # reads nothing from here on
            rows: list[Row] = [(s, float(s), {f"m{k}": 1.0 for k in range(64)}) for s in range(1000)]
            waiting = []
            while child.process.stdin.transport.get_write_buffer_size() <= analysts.WRITE_AHEAD_BYTES:
                waiting.append(child.feed("a", rows))
            started = time.monotonic()
            await child.ready()
            assert 0.4 < time.monotonic() - started < 5
            for done in waiting:
                with pytest.raises(AnalystLost):
                    await done
            for _ in range(300):
                if child.stats["started"] == 2:
                    break
                await asyncio.sleep(0.02)
            assert child.stats == {"started": 2, "lost": 1}
        finally:
            await child.close()

    run(body)


def test_a_server_whose_analysis_process_died_still_stores_each_finding_once(tmp_path: Path) -> None:
    """The child is killed mid-run: the batches it never answered are replayed from the store into the
    next child, so the NaN logged then is reported, once, and a later one in another metric too."""
    server = ServerThread(Settings(port=free_port(), data_dir=str(tmp_path))).start()
    analyst = server.hub.analysis.analyst
    assert isinstance(analyst, ProcessAnalyst) and analyst.process is not None
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/api/runs", json={"id": "r"}).status_code == 201

            def send(first: int, extra: dict[str, Any]) -> None:
                events = [
                    {"seq": s, "step": s, "data": {"loss": 1.0 / (s + 1), **extra}}
                    for s in range(first, first + 10)
                ]
                assert client.post("/api/runs/r/events", json={"events": events}).status_code == 200

            def kinds() -> list[tuple[str, list[str]]]:
                insights = client.get("/api/runs/r/insights").json()["insights"]
                return sorted(
                    (i["kind"], i["evidence"]["metrics"]) for i in insights if i["kind"] == "nan_inf"
                )

            send(0, {})
            os.kill(analyst.process.pid, signal.SIGKILL)
            send(10, {"g": "nan"})  # its answer is lost with the child
            wait_until(lambda: analyst.stats["started"] == 2, timeout=10, what="a second analysis process")
            send(20, {})  # replays the run into the new child: the NaN of g is found there
            send(30, {"h": "nan"})
            wait_until(lambda: len(kinds()) == 2, timeout=10, what=f"both NaN findings, got {kinds()}")
            send(40, {"g": "nan", "h": "nan"})
            assert kinds() == [("nan_inf", ["g"]), ("nan_inf", ["h"])]  # once per metric, replay included
    finally:
        server.stop()


def test_where_the_detectors_run_is_checked() -> None:
    with pytest.raises(ConfigError, match="process or inline"):
        Settings(analysis="thread").check()


def test_where_no_child_can_start_the_detectors_run_in_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(analysts.sys, "executable", str(tmp_path / "no-such-python"))

    async def body() -> None:
        assert isinstance(await analysts.open_analyst("process"), InlineAnalyst)

    run(body)
    monkeypatch.undo()
    server = ServerThread(Settings(port=free_port(), data_dir=str(tmp_path), analysis="inline")).start()
    try:
        assert isinstance(server.hub.analysis.analyst, InlineAnalyst)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/api/runs", json={"id": "r"}).status_code == 201
            events = [{"seq": s, "step": s, "data": {"loss": "nan" if s == 3 else 1.0}} for s in range(5)]
            assert client.post("/api/runs/r/events", json={"events": events}).status_code == 200
            insights = client.get("/api/runs/r/insights").json()["insights"]  # stored before the answer
            assert [(i["kind"], i["step"]) for i in insights] == [("nan_inf", 3)]
    finally:
        server.stop()
