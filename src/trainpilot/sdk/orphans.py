"""Spools left by processes that died before delivering them, sent by the next process on the data dir.

`init()` calls `replay` once per machine (local rank 0), after its run has claimed its own spool, so
only files no live process holds are taken (spool.py, `orphans`). They go in the background, each with
the sender's retry and backoff, until delivered or this process exits; the server stores an event it
already has once, so a batch sent twice costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from trainpilot.sdk.sender import Sender
from trainpilot.sdk.spool import orphans
from trainpilot.sdk.transport import Transport


def replay(connect: Callable[[], Transport], data_dir: str) -> None:
    """Send the orphaned spools under `data_dir` on a daemon thread, over a transport of their own."""
    spools = list(orphans(data_dir))
    if not spools:
        return

    def send_all() -> None:
        transport = connect()
        for spool in spools:
            stem = spool.path.stem
            sender = Sender(
                transport, spool, {"id": stem, "project": "default", "name": stem, "config": {}}, 0
            )
            while True:  # a daemon thread: it retries with the sender's backoff until done or exit
                sender.replay()
                if not spool:
                    break
                time.sleep(max(0.0, sender.retry_at - time.monotonic()))
            spool.close()
        transport.close()

    threading.Thread(target=send_all, name="trainpilot-replay", daemon=True).start()
