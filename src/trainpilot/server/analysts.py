"""Who runs the live detectors for LiveAnalysis: a child process (the default), or this process.

The detectors are the largest CPU cost of ingest (docs/benchmarks.md, case 3's stage table: 12.9 µs
an 8-metric event, against 2.7 to validate it and 1.4 to encode it for subscribers). In a child
process (analysis/process.py) they run on another core, beside the event loop and the store's
writer instead of taking turns with them under one GIL. The child gets each stored metrics event
once, as JSON down a pipe, and answers what it found; the server stores that as insight events.

Both kinds keep the same contract: `start` and `forget` take effect in call order with `feed`,
whose future holds the findings of its rows (or fails: the run's analysis is gone then, and the
caller replays its history into a fresh one). `AnalystLost` is a child that died: it is started
again, and each run it knew is replayed from the store at its next batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
from typing import Any, Protocol

import orjson

from trainpilot.analysis import RunAnalysis, Thresholds
from trainpilot.analysis.process import answer
from trainpilot.events import Event, NewEvent

log = logging.getLogger("trainpilot.server")
Row = tuple[int, float, dict[str, Any]]  # a stored metrics event: step, ts, its metrics
WRITE_AHEAD_BYTES = 8 * 2**20  # requests queued for the child before ingest waits for it to catch up
ANSWER_LINE_BYTES = 64 * 2**20  # the longest answer read back (a replayed page's findings)
RESTART_S = 1.0  # a child that died is started again after this
STUCK_S = 10.0  # a child with a full input that reads nothing for this long is killed


class AnalystLost(Exception):
    """The analysis process died or could not start: what it held is gone."""


class Analyst(Protocol):
    def start(self, run_id: str, config: dict[str, Any]) -> None: ...

    def feed(self, run_id: str, rows: list[Row]) -> asyncio.Future[list[NewEvent]]: ...

    def forget(self, run_id: str) -> None: ...

    async def ready(self) -> None:
        """Return once the analyst can take more: how a slow analysis holds back ingest, boundedly."""

    async def close(self) -> None: ...


def metric_rows(events: list[Event]) -> list[Row]:
    """What the detectors read of stored events: the metrics at a step."""
    return [(e.step, e.ts, e.data) for e in events if e.kind == "metrics" and e.step is not None]


def settle(done: asyncio.Future[list[NewEvent]], run_id: str, answer: dict[str, Any]) -> None:
    """Resolve a feed's future with its answer: the insight events found, or the analysis lost."""
    if done.done():
        return
    if "error" in answer:
        done.set_exception(AnalystLost(answer["error"]))
    else:
        found = answer["found"]
        done.set_result([NewEvent(run_id, "insight", data, ts=ts, step=step) for ts, step, data in found])


class InlineAnalyst:
    """The detectors in this process: where no child can be started, and for `analysis="inline"`."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.runs: dict[str, RunAnalysis] = {}

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        self.runs[run_id] = RunAnalysis(self.thresholds, config)

    def feed(self, run_id: str, rows: list[Row]) -> asyncio.Future[list[NewEvent]]:
        done: asyncio.Future[list[NewEvent]] = asyncio.get_running_loop().create_future()
        settle(done, run_id, answer(self.runs, run_id, rows))
        return done

    def forget(self, run_id: str) -> None:
        self.runs.pop(run_id, None)

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        self.runs.clear()


class ProcessAnalyst:
    """The detectors in `python -m trainpilot.analysis.process`, one request a line each way."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.waiting: collections.deque[tuple[str, asyncio.Future[list[NewEvent]]]] = collections.deque()
        self.stats = {"started": 0, "lost": 0}
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls) -> ProcessAnalyst:
        """Start the child; OSError if it cannot be."""
        analyst = cls()
        await analyst._spawn()
        analyst._supervisor = asyncio.create_task(analyst._supervise(), name="trainpilot-analysis")
        return analyst

    async def _spawn(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trainpilot.analysis.process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=ANSWER_LINE_BYTES,
        )
        assert process.stdin is not None
        process.stdin.transport.set_write_buffer_limits(high=WRITE_AHEAD_BYTES)
        self.process = process
        self.stats["started"] += 1

    async def _supervise(self) -> None:
        """Read the child's answers; when it exits, fail what waits on it and start another."""
        while self.process is not None:
            await self._answers(self.process)
            self.process = None
            if self._closed:
                return
            self.stats["lost"] += 1
            log.warning("analysis: the analysis process died; starting another in %g s", RESTART_S)
            while not self._closed and self.process is None:
                await asyncio.sleep(RESTART_S)
                try:
                    await self._spawn()
                except OSError as exc:
                    log.warning("analysis: could not start the analysis process: %s", exc)

    def _send(self, request: list[Any]) -> bool:
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return False
        process.stdin.write(orjson.dumps(request) + b"\n")
        return True

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        self._send(["start", run_id, config])

    def feed(self, run_id: str, rows: list[Row]) -> asyncio.Future[list[NewEvent]]:
        done: asyncio.Future[list[NewEvent]] = asyncio.get_running_loop().create_future()
        if self._send(["feed", run_id, rows]):
            self.waiting.append((run_id, done))
        else:
            done.set_exception(AnalystLost("the analysis process is not running"))
        return done

    def forget(self, run_id: str) -> None:
        self._send(["forget", run_id, None])

    async def ready(self) -> None:
        """Wait while `WRITE_AHEAD_BYTES` are queued for the child; a child that read nothing for
        `STUCK_S` (a detector that never returns) is killed, and replaced as one that died."""
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        if process.stdin.transport.get_write_buffer_size() <= WRITE_AHEAD_BYTES:
            return  # the usual case, at no more cost than this check
        try:
            await asyncio.wait_for(process.stdin.drain(), STUCK_S)
        except TimeoutError:
            log.warning("analysis: the analysis process read nothing for %g s; restarting it", STUCK_S)
            process.kill()
        except ConnectionError:
            pass  # the child died: its reader fails what waits and starts another

    async def _answers(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                run_id, done = self.waiting.popleft()
                settle(done, run_id, orjson.loads(line))
        except Exception:  # a line that is not an answer: the child is not speaking our protocol
            log.exception("analysis: the analysis process answered something unreadable")
            process.kill()
        await process.wait()
        lost = AnalystLost(f"the analysis process exited with {process.returncode}")
        while self.waiting:
            _, done = self.waiting.popleft()
            if not done.done():
                done.set_exception(lost)

    async def close(self) -> None:
        """End the child at the end of its input: what it was asked is answered first."""
        self._closed = True
        supervisor, process = self._supervisor, self.process
        if supervisor is None:
            return
        if process is None or process.stdin is None:
            supervisor.cancel()  # between two children: nothing to wait for
        else:
            process.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(supervisor), 5)
            except TimeoutError:
                process.kill()
        await asyncio.gather(supervisor, return_exceptions=True)


async def open_analyst(kind: str) -> Analyst:
    """The configured analyst; the detectors run here, with a warning, if no child process can start."""
    if kind == "inline":
        return InlineAnalyst()
    try:
        return await ProcessAnalyst.open()
    except (OSError, RuntimeError, NotImplementedError) as exc:  # no executable; a loop without subprocesses
        log.warning("analysis: no analysis process (%s): the detectors run in the server's process", exc)
        return InlineAnalyst()
