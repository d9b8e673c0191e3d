"""The parameters both live streams take, SSE's from the query and the WebSocket's from a message.

A cursor (``after``, or SSE's ``Last-Event-ID``, which wins) is an event id to resume after; the
filters (``run_id``, ``kinds``, ``keys``) are lists whose items may be comma-separated. A bad value
raises `InvalidInput` naming the field, which each endpoint answers in its own way.
"""

from __future__ import annotations

from typing import Any

from trainpilot.broker import Filter
from trainpilot.events import KINDS
from trainpilot.exceptions import InvalidInput


def parse_filter(run_ids: list[str], kinds: list[str], keys: list[str]) -> Filter:
    """A subscriber filter from (possibly comma-separated) lists; empty means everything."""

    def split(values: list[str]) -> frozenset[str] | None:
        items = {part for v in values for part in v.split(",") if part}
        return frozenset(items) if items else None

    wanted = split(kinds)
    if wanted is not None and not wanted <= KINDS:
        raise InvalidInput("kinds", f"unknown kinds {sorted(wanted - KINDS)}; use {sorted(KINDS)}")
    flt = Filter(run_ids=split(run_ids), kinds=wanted, keys=split(keys))
    # Thousands of subscribers share a handful of filters: one copy each, not one per connection.
    return _FILTERS.setdefault(flt, flt) if len(_FILTERS) < 1024 else flt


_FILTERS: dict[Filter, Filter] = {}


def parse_cursor(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise InvalidInput(field, "must be a non-negative integer event id")


def resume_cursor(last_event_id: str | None, after: Any) -> int | None:
    """Where a stream resumes: ``Last-Event-ID`` (what a reconnecting EventSource sends), else ``after``."""
    header_cursor = parse_cursor(last_event_id, "Last-Event-ID")
    return header_cursor if header_cursor is not None else parse_cursor(after, "after")


def string_list(value: Any, field: str) -> list[str]:
    """A filter from a JSON message: absent, one string, or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidInput(field, "must be a string or a list of strings")
