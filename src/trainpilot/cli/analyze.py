"""`trainpilot analyze`: the detectors on runs read from a TensorBoard directory, a JSON file, or a
server, printed as a table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import orjson

from trainpilot.cli.common import CLIError, print_table
from trainpilot.client.rest import ApiClient, env_token

Events = list[dict[str, Any]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    analyze = sub.add_parser("analyze", help="find training problems in a run, offline")
    analyze.add_argument("source", help="a TensorBoard log directory, a JSON(L) file of events, or a run id")
    analyze.add_argument("--server", help="the server holding the run id")
    analyze.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    analyze.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    from trainpilot.analysis import analyze_events

    try:
        runs = load(args.source, args.server)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    results = [{"run": name, **f.as_data()} for name, events in runs.items() for f in analyze_events(events)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [["RUN", "STEP", "SEVERITY", "KIND", "FINDING"]]
    rows += [[r["run"], str(r["step"]), r["severity"], r["kind"], r["message"]] for r in results]
    print_table(rows)
    if not results:
        print(f"no problems found in {len(runs)} run(s)")
    return 0


def load(source: str, server: str | None = None) -> dict[str, Events]:
    """Runs (name -> envelope-shaped events) from SOURCE: a log directory, a .json/.jsonl file, or a run id
    on `server`."""
    path = Path(source).expanduser()
    if path.is_dir():
        from trainpilot.tensorboard.reader import read_logdir

        runs = read_logdir(path)
        if not runs:
            raise ValueError(f"no TensorBoard scalars under {source}")
        return runs
    if path.is_file():
        return {path.stem: read_json_events(path)}
    if server:
        return {source: from_server(server, source)}
    raise ValueError(f"{source} is neither a directory nor a file; for a run id, pass --server URL")


def read_json_events(path: Path) -> Events:
    """JSON Lines (one event per line) or one object with an ``events`` list.

    Python's `json` module writes NaN and infinities as the bare literals ``NaN``, ``Infinity`` and
    ``-Infinity``, which strict JSON (and orjson) refuses; they are the values that matter most here,
    so a file orjson cannot read is read again with `json`, which takes them.
    """
    text = path.read_bytes()
    try:
        whole = _loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("events"), list):
        return [e for e in whole["events"] if isinstance(e, dict)]
    if isinstance(whole, list):
        return [e for e in whole if isinstance(e, dict)]
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = _loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if isinstance(event, dict):
            events.append(event)
    return events


def _loads(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN / Infinity literals; raises ValueError for anything else


def from_server(server: str, run_id: str) -> Events:
    """The run's metric history as metrics events, one per step."""
    params = {"run_id": run_id, "max_points": 100000}
    history = ApiClient(server, env_token(), timeout_s=60).call("GET", "/api/metrics/history", params=params)
    by_step: dict[int, dict[str, float]] = {}
    for key, series in history["series"].items():
        for step, value in zip(series["step"], series["value"], strict=True):
            by_step.setdefault(step, {})[key] = value
    return [{"kind": "metrics", "step": step, "data": data} for step, data in sorted(by_step.items())]
