"""What the Host/Origin/body-type guard costs per request, against a plain dict lookup of the same headers.

    cd bench && ../.venv/bin/python guard_cost.py

Timed in one run, so the ratio holds on a noisy machine even when the absolute figures do not.
"""

from __future__ import annotations

import timeit

from trainpilot.server.guard import Guard
from trainpilot.settings import Settings

INGEST = {
    "type": "http",
    "method": "POST",
    "path": "/api/runs/r-1/events",
    "headers": [
        (b"host", b"127.0.0.1:8765"),
        (b"accept-encoding", b"identity"),
        (b"content-type", b"application/json"),
        (b"content-length", b"2345"),
        (b"user-agent", b"Python-urllib/3.11"),
    ],
}


def main() -> None:
    guard = Guard(Settings())
    n = 200_000
    checked = min(timeit.repeat(lambda: guard.refusal(INGEST), number=n, repeat=5)) / n
    floor = min(timeit.repeat(lambda: dict(INGEST["headers"]), number=n, repeat=5)) / n  # type: ignore[arg-type]
    print(
        f"guard.refusal: {checked * 1e9:.0f} ns per ingest request; dict(headers): {floor * 1e9:.0f} ns "
        f"({checked / floor:.1f}x)"
    )


if __name__ == "__main__":
    main()
