"""Writing to a subscriber without a task: step a send coroutine once, resume it only if it waited."""

from __future__ import annotations

import asyncio
import tracemalloc

import orjson

from trainpilot.broker.subscriber import DONE, encoded, resume, step
from trainpilot.events import Event


def test_a_send_that_does_not_wait_finishes_in_one_step() -> None:
    written: list[str] = []

    async def send(message: str) -> None:
        written.append(message)

    async def body() -> None:
        assert step(send("a")) is DONE
        assert written == ["a"]

    asyncio.run(body())


def test_a_send_that_waits_is_finished_by_resume_once_its_future_is_done() -> None:
    async def body() -> None:
        writable = asyncio.Event()
        written: list[str] = []

        async def send(message: str) -> None:
            await writable.wait()  # like a transport paused for flow control
            await asyncio.sleep(0)  # and a bare yield on the way
            written.append(message)

        coro = send("b")
        waiting = step(coro)
        assert waiting is not DONE and written == []
        task = asyncio.create_task(resume(coro, waiting))
        await asyncio.sleep(0.01)
        assert not task.done()
        writable.set()
        await asyncio.wait_for(task, 1)
        assert written == ["b"]

    asyncio.run(body())


def test_cancelling_resume_cancels_the_pending_send() -> None:
    async def body() -> None:
        cancelled = asyncio.Event()

        async def send() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        coro = send()
        task = asyncio.create_task(resume(coro, step(coro)))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert cancelled.is_set() and task.cancelled()

    asyncio.run(body())


def test_an_encoded_event_holds_its_bytes_and_no_more() -> None:
    """The ring keeps 16,384 encoded events: each must cost its bytes, not orjson's 4 kB buffer."""
    events = [
        Event(i, "r-1", i, "metrics", 1e9 + i, i, {"train/loss": 1 / (i + 1), "lr": 0.1}) for i in range(500)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frames = [encoded(event) for event in events]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(events)
    finally:
        tracemalloc.stop()
    for event, payload, frame in frames:
        assert payload == orjson.dumps(event)
        assert frame == b"id: %d\nevent: metrics\ndata: %b\n\n" % (event.id, payload)
    assert held < 1024, f"{held:.0f} bytes an encoded event"
