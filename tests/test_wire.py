from __future__ import annotations

import math

import pytest

from trainpilot.events import Event
from trainpilot.exceptions import InvalidInput
from trainpilot.wire import decode_batch, encode_event, sse_frame


def test_a_valid_batch_decodes_with_defaults() -> None:
    events = decode_batch("r", {"events": [{"seq": 1, "step": 0, "data": {"loss": 1, "ok": True}}]}, now=5.0)
    assert events[0].kind == "metrics" and events[0].ts == 5.0
    assert events[0].data == {"loss": 1.0, "ok": 1.0}


def test_non_finite_markers_become_null() -> None:
    (event,) = decode_batch("r", [{"data": {"a": "nan", "b": "-inf", "c": None, "d": math.inf}}])
    assert event.data == {"a": None, "b": None, "c": None, "d": None}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"events": "nope"}, "events"),
        ({"events": [{"data": {"loss": "high"}}]}, "events[0].data.loss"),
        ({"events": [{}, {"kind": "gossip"}]}, "events[1].kind"),
        ({"events": [{"step": -1}]}, "events[0].step"),
        ({"events": [{"seq": 1.5}]}, "events[0].seq"),
        ({"events": [{"ts": "yesterday"}]}, "events[0].ts"),
        ({"events": [{"data": [1, 2]}]}, "events[0].data"),
        ({"events": [{"kind": "status", "data": {"status": "dancing"}}]}, "events[0].data.status"),
        (
            {"events": [{"kind": "control", "data": {"action": "pause", "status": "requested"}}]},
            "events[0].data.status",
        ),
        ({"events": [{"data": {"x" * 300: 1.0}}]}, "events[0].data"),
    ],
)
def test_bad_input_names_the_field(payload: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_batch("r", payload)
    assert info.value.field == field


def test_sse_frame_carries_id_kind_and_json() -> None:
    event = Event(42, "r", 1, "metrics", 1.0, 3, {"loss": 0.5})
    frame = sse_frame(event, encode_event(event))
    assert frame.startswith(b"id: 42\nevent: metrics\ndata: {") and frame.endswith(b"}\n\n")
