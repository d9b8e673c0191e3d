"""Where `trainpilot analyze` reads a run from: a TensorBoard directory, a JSON file, or a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

Events = list[dict[str, Any]]


def load(source: str, server: str | None = None) -> dict[str, Events]:
    """Runs (name -> envelope-shaped events) from SOURCE: a log directory, a .json/.jsonl file, or a run id
    on `server`."""
    path = Path(source).expanduser()
    if path.is_dir():
        from trainpilot.tensorboard.tailer import read_logdir

        runs = read_logdir(path)
        if not runs:
            raise ValueError(f"no TensorBoard scalars under {source}")
        return runs
    if path.is_file():
        return {path.stem: read_json_events(path)}
    if server:
        from trainpilot.client.rest import env_token

        return {source: from_server(server, source, env_token())}
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


def from_server(server: str, run_id: str, token: str | None = None) -> Events:
    import httpx

    from trainpilot.client.rest import auth_headers

    response = httpx.get(
        f"{server.rstrip('/')}/api/metrics/history",
        params={"run_id": run_id, "max_points": 100000},
        headers=auth_headers(token),
        timeout=60,
    )
    if response.status_code != 200:
        raise ValueError(f"{server}: run {run_id}: HTTP {response.status_code}")
    by_step: dict[int, dict[str, float]] = {}
    for key, series in response.json()["series"].items():
        for step, value in zip(series["step"], series["value"], strict=True):
            by_step.setdefault(step, {})[key] = value
    return [{"kind": "metrics", "step": step, "data": data} for step, data in sorted(by_step.items())]
