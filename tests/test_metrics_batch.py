"""The C path for metrics batches takes only what the Python path accepts, and makes the same events."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import create_run, in_process
from trainpilot.exceptions import InvalidInput
from trainpilot.server.metrics_batch import decode_ingest_message, decode_metrics
from trainpilot.wire import MAX_KEY_LENGTH, MAX_STEP, decode_batch

NOW = 1_700_000_000.5


def python_path(body: bytes) -> list[Any] | None:
    """What `wire.decode_batch` makes of a body, or None where it (or parsing it) refuses it."""
    try:
        return decode_batch("r", orjson.loads(body), now=NOW)
    except (InvalidInput, orjson.JSONDecodeError):
        return None


TAKEN = [
    {"events": []},
    {"events": [{}]},
    {"events": [{"kind": "metrics", "seq": 0, "step": 0, "ts": 1, "data": {"a": 1}}]},
    {"events": [{"step": MAX_STEP, "seq": MAX_STEP, "data": {"x" * MAX_KEY_LENGTH: -0.0, "é": 2.5}}]},
    {"events": [{"data": {"a": None, "b": 1e308, "c": 123456789012345678901234567890}}]},
    {"events": [{"ts": None, "seq": None, "step": None, "data": {"a": 1, "a ": 2}}], "other": 1},
    {"events": [{"data": {"loss": 0.5}, "unknown": [1, 2]}]},
]
REFUSED = [
    [{"data": {"a": 1}}],  # a bare list: the Python path takes it
    {"events": [{"kind": "log", "data": {"text": "hi"}}]},
    {"events": [{"data": {"a": "nan"}}]},
    {"events": [{"data": {"a": True}}]},
    {"events": [{"ts": True}]},
    {"events": [{"seq": 1.0}]},
    {"events": [{"step": -1}]},
    {"events": [{"step": MAX_STEP + 1}]},
    {"events": [{"data": {"": 1}}]},
    {"events": [{"data": {"x" * (MAX_KEY_LENGTH + 1): 1}}]},
    {"events": [{"data": None}]},
    {"events": [{"data": [1]}]},
    {"events": [{"data": {"a": {"b": 1}}}]},
    {"events": [1]},
    {"events": None},
    {"event": []},
]


@pytest.mark.parametrize("payload", TAKEN)
def test_a_batch_of_metrics_makes_the_same_events_both_ways(payload: Any) -> None:
    body = json.dumps(payload).encode()  # orjson writes no integer past 64 bits
    assert decode_metrics("r", body, now=NOW) == python_path(body)


@pytest.mark.parametrize("payload", REFUSED)
def test_anything_else_is_left_to_the_python_path(payload: Any) -> None:
    assert decode_metrics("r", json.dumps(payload).encode(), now=NOW) is None


DEEP = b"[" * 2000 + b"]" * 2000  # msgspec raises RecursionError past its depth, orjson a 400 past 1024


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"events": [1e400]}',
        b'{"events": [{"data": {"a": 1e400}}]}',
        b"\xff",
        b"nul",
        b'{"events": [], "x": ' + DEEP + b"}",
    ],
)
def test_bodies_that_are_not_json_are_left_to_the_python_path(body: bytes) -> None:
    assert decode_metrics("r", body, now=NOW) is None


def test_random_bodies_are_taken_only_where_the_python_path_makes_the_same_events() -> None:
    """Bodies built from the pieces real batches and mistakes are made of: whenever the C path takes
    one, the Python path makes exactly its events; where the Python path refuses, the C path does."""
    rng = random.Random(7)
    values: list[Any] = [0, 1, -1, 2.5, -0.0, 1e300, None, "nan", "inf", "x", True, False, [], {}, 2**70]
    keys = ["loss", "", "é", "x" * MAX_KEY_LENGTH, "x" * (MAX_KEY_LENGTH + 1), "a/b", "\u0000", "\ud800"]
    counts: list[Any] = [None, 0, 5, MAX_STEP, MAX_STEP + 1, -1, 1.0, "3", True]
    kinds: list[Any] = ["metrics", "log", "status", None, 3]
    taken = 0
    for _ in range(3000):
        events = []
        for _ in range(rng.randint(0, 4)):
            event: dict[str, Any] = {}
            for field, choices in (("seq", counts), ("step", counts), ("ts", [None, 1, 1.5, "1", True])):
                if rng.random() < 0.6:
                    event[field] = rng.choice(choices)
            if rng.random() < 0.3:
                event["kind"] = rng.choice(kinds)
            if rng.random() < 0.9:
                event["data"] = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 3))}
            events.append(event)
        body = json.dumps({"events": events}).encode()
        fast = decode_metrics("r", body, now=NOW)
        slow = python_path(body)
        if fast is not None:
            taken += 1
            assert fast == slow, body
        if slow is None:
            assert fast is None, body
    assert taken > 300  # the generator reaches the C path's side often enough to mean something


@pytest.mark.parametrize("payload", TAKEN)
def test_a_websocket_ingest_message_of_metrics_makes_the_same_events_and_keeps_its_ref(payload: Any) -> None:
    message = {"op": "ingest", "run_id": "r", "ref": {"any": [1]}, **payload}
    assert decode_ingest_message(json.dumps(message), now=NOW) == (
        {"any": [1]},
        "r",
        python_path(json.dumps(payload).encode()),
    )


@pytest.mark.parametrize(
    "message",
    [
        {"op": "ping"},
        {"op": "subscribe", "run_id": "r"},
        {"op": "ingest", "events": []},  # no run: the Python path names it
        {"op": "ingest", "run_id": 5, "events": []},
        *({"op": "ingest", "run_id": "r", **p} for p in REFUSED if isinstance(p, dict) and "events" in p),
    ],
)
def test_every_other_websocket_message_is_left_to_the_python_path(message: Any) -> None:
    assert decode_ingest_message(json.dumps(message), now=NOW) is None


def test_a_deeply_nested_websocket_message_is_left_to_the_python_path() -> None:
    assert (
        decode_ingest_message(b'{"op": "ingest", "run_id": "r", "events": [], "ref": ' + DEEP + b"}") is None
    )


def test_a_body_nested_past_every_parser_s_depth_is_a_400_naming_the_json(tmp_path: Path) -> None:
    with in_process(tmp_path, store="") as client:
        create_run(client, "deep")
        body = b'{"events": [], "x": ' + DEEP + b"}"
        answer = client.post(
            "/api/runs/deep/events", content=body, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_json"
