"""The wire format: decode incoming envelopes with exact errors, encode stored events once.

Decoding is strict and whole-batch: a batch with one bad event is refused before anything is
stored (`InvalidInput` names the offending field, e.g. ``events[3].data.loss``). Encoding is done
once per event, at publish time, into the bytes every subscriber shares (DESIGN.md, fan-out).

Non-finite metric values cannot travel as JSON numbers. Clients send them as the strings
``"nan"``, ``"inf"`` or ``"-inf"`` (the SDK does this for you); they are stored as ``null`` and
reported by the server as a ``nan_inf`` insight instead of being dropped silently.

The limits both ends keep live here too (the step bound, what a media upload may be), so the SDK
checks what the server will check without importing the server.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from trainpilot.events import ACTIONS, KINDS, RUN_STATUSES, Event, Kind, NewEvent
from trainpilot.exceptions import InvalidInput

MAX_KEY_LENGTH = 256
MAX_KEYS_PER_EVENT = 4096
MAX_EVENTS_PER_BATCH = 50_000
MAX_RUN_ID_LENGTH = 128
MAX_STEP = 2**63 - 1  # steps and seqs: signed 64-bit integers in every store
NON_FINITE = frozenset({"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})
CONTROL_STATUSES = frozenset({"requested", "applied", "rejected"})

# Media: an upload's body is the image's bytes, recognised by their magic, not by its Content-Type.
MAX_MEDIA_BYTES = 10 * 2**20
IMAGE_FORMATS = {  # magic bytes -> (file extension, content type); WebP is RIFF with "WEBP" at byte 8
    b"\x89PNG\r\n\x1a\n": ("png", "image/png"),
    b"\xff\xd8\xff": ("jpg", "image/jpeg"),
    b"GIF87a": ("gif", "image/gif"),
    b"GIF89a": ("gif", "image/gif"),
    b"RIFF": ("webp", "image/webp"),
}
MEDIA_BODY_TYPE = "application/octet-stream"  # what the SDK sends; any image type is taken too
MEDIA_CONTENT_TYPES = frozenset({mime for _, mime in IMAGE_FORMATS.values()} | {MEDIA_BODY_TYPE})


def decode_batch(run_id: str, payload: Any, now: float | None = None) -> list[NewEvent]:
    """Validate ``{"events": [...]}`` (or a bare list) into events of `run_id`."""
    events = payload.get("events") if isinstance(payload, dict) else payload
    if not isinstance(events, list):
        raise InvalidInput("events", "expected a list of events")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise InvalidInput("events", f"at most {MAX_EVENTS_PER_BATCH} events per batch, got {len(events)}")
    stamp = time.time() if now is None else now
    return [decode_event(run_id, raw, f"events[{i}]", stamp) for i, raw in enumerate(events)]


def decode_event(run_id: str, raw: Any, where: str, now: float) -> NewEvent:
    if not isinstance(raw, dict):
        raise InvalidInput(where, "expected an object")
    kind = raw.get("kind", "metrics")
    if not _one_of(kind, KINDS):
        raise InvalidInput(f"{where}.kind", f"must be one of {sorted(KINDS)}, got {kind!r}")
    seq = optional_int(raw.get("seq"), f"{where}.seq")
    step = optional_int(raw.get("step"), f"{where}.step")
    ts = raw.get("ts")
    if ts is None:
        ts = now
    elif isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise InvalidInput(f"{where}.ts", "must be a finite number (seconds since the epoch)")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}.data", "expected an object")
    data = _check_data(kind, data, f"{where}.data")
    return NewEvent(run_id=run_id, kind=kind, data=data, seq=seq, ts=float(ts), step=step)


def _one_of(value: Any, allowed: frozenset[str] | set[str]) -> bool:
    """Membership that a list or an object (unhashable) answers with False, not a TypeError."""
    return isinstance(value, str) and value in allowed


def optional_int(value: Any, where: str) -> int | None:
    """A seq or step: absent, or an integer in 0..2**63-1 (what the store packs)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEP:
        raise InvalidInput(where, "must be a non-negative integer")
    return value


def _check_data(kind: Kind, data: dict[str, Any], where: str) -> dict[str, Any]:
    if kind == "metrics":
        return metric_values(data, where)
    if kind == "status" and not _one_of(data.get("status"), RUN_STATUSES):
        raise InvalidInput(f"{where}.status", f"must be one of {sorted(RUN_STATUSES)}")
    if kind == "control":
        if not _one_of(data.get("action"), ACTIONS):
            raise InvalidInput(f"{where}.action", f"must be one of {sorted(ACTIONS)}")
        if not _one_of(data.get("status"), CONTROL_STATUSES - {"requested"}):
            raise InvalidInput(
                f"{where}.status",
                "a run acknowledges with 'applied' or 'rejected'; request commands "
                "with POST /api/training/control",
            )
    return data


def metric_values(data: dict[str, Any], where: str) -> dict[str, float | None]:
    """Check a metrics mapping: names to finite numbers; non-finite markers become ``None``."""
    if len(data) > MAX_KEYS_PER_EVENT:
        raise InvalidInput(where, f"at most {MAX_KEYS_PER_EVENT} metrics per event, got {len(data)}")
    out: dict[str, float | None] = {}
    for key, value in data.items():
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidInput(where, f"metric names must be 1 to {MAX_KEY_LENGTH} characters")
        if isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
        elif isinstance(value, int):
            out[key] = float(value)
        elif value is None or (isinstance(value, str) and value.lower() in NON_FINITE):
            out[key] = None
        else:
            raise InvalidInput(f"{where}.{key}", f"must be a number, got {type(value).__name__}")
    return out


def check_run_id(run_id: str) -> str:
    if not run_id or len(run_id) > MAX_RUN_ID_LENGTH or not run_id.isprintable() or "/" in run_id:
        raise InvalidInput("run_id", f"must be 1 to {MAX_RUN_ID_LENGTH} printable characters without '/'")
    return run_id


def encode_event(event: Event) -> bytes:
    """The event's JSON, as stored and as sent."""
    return orjson.dumps(event)


def sse_frame(event: Event, payload: bytes) -> bytes:
    """One Server-Sent-Events frame: the id is the resume cursor, the name is the kind."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.kind.encode(), payload)


def sse_comment(text: str) -> bytes:
    return b": %s\n\n" % text.encode()


def sse_named(name: str, payload: Any) -> bytes:
    """A frame without an id (resync, errors): it must not move the client's resume cursor."""
    return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(payload))
