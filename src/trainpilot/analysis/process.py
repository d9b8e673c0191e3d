"""The live detectors in a process of their own, so their CPU is not the server's event loop's.

The server (server/analysts.py) starts ``python -m trainpilot.analysis.process`` and speaks to it
one JSON array a line on stdin, each answered, in order, by one line on stdout:

- ``["start", run_id, config]``: a fresh analysis for the run (no answer);
- ``["feed", run_id, [[step, ts, metrics], ...]]``: a run's stored metrics events, in id order;
  answered ``{"found": [[ts, step, insight_data], ...]}`` or ``{"error": "..."}`` (the run's
  analysis is dropped then: the server replays its history into a fresh one);
- ``["forget", run_id, null]``: the run ended (no answer).

A run it was never told to start is an error rather than a fresh analysis: after a restart of this
process the server must replay the run's history first, or the detectors would see half a curve.
It exits when stdin closes, so it never outlives the server, whatever killed that.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson

from trainpilot.analysis.engine import RunAnalysis
from trainpilot.analysis.findings import Thresholds


def answer(analyses: dict[str, RunAnalysis], run_id: str, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """What the run's detectors find in `rows` ([step, ts, metrics] each), or why they cannot."""
    analysis = analyses.get(run_id)
    if analysis is None:
        return {"error": f"no analysis for run {run_id!r}: it must be started (and its history replayed)"}
    try:
        found = [
            [ts, f.step, f.as_data()] for step, ts, metrics in rows for f in analysis.observe(step, metrics)
        ]
    except Exception as exc:  # one run's failing detector must not end the others' analysis
        del analyses[run_id]
        traceback.print_exc(file=sys.stderr)
        return {"error": f"analysis of run {run_id!r} failed: {type(exc).__name__}: {exc}"}
    return {"found": found}


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    analyses: dict[str, RunAnalysis] = {}
    thresholds = Thresholds()
    for line in requests:
        op, run_id, arg = orjson.loads(line)
        if op == "feed":
            answers.write(orjson.dumps(answer(analyses, run_id, arg)) + b"\n")
            answers.flush()
        elif op == "start":
            analyses[run_id] = RunAnalysis(thresholds, arg)
        elif op == "forget":
            analyses.pop(run_id, None)
        else:
            raise ValueError(f"unknown request {op!r}")


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
