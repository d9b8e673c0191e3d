"""A small OpenAI-compatible chat server on a free port that records what it is sent, for the advisor's
tests and the dashboard's ask box."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from trainpilot.server.runner import free_port

ANSWER = ["Lower ", "the learning ", "rate to 0.01."]
WRONG = ["Your run ", "looks healthy; ", "keep training."]  # what a small model may say of a diverged run
SLOW_S = 1.0  # between two chunks of /slow/v1: time enough to see a partial answer, or to stop it


class FakeLLM:
    """/ok/v1 streams ANSWER; /wrong/v1 WRONG; /slow/v1 ANSWER one chunk every SLOW_S; /fail/v1
    answers 500; /garbage/v1 streams a line that is not SSE."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()

        async def chat(request: Request) -> Response:
            body = await request.json()
            self.requests.append(
                {"path": request.url.path, "body": body, "auth": request.headers.get("authorization")}
            )
            mode = request.url.path.split("/")[1]
            if mode == "fail":
                return Response("model exploded", status_code=500)

            async def chunks() -> AsyncIterator[bytes]:
                if mode == "garbage":
                    yield b"this is not a server-sent event\n\n"
                    return
                for i, text in enumerate(WRONG if mode == "wrong" else ANSWER):
                    if mode == "slow" and i:
                        await asyncio.sleep(SLOW_S)
                    yield (
                        b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\n\n"
                    )
                yield b"data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")

        app = Starlette(routes=[Route("/{mode}/v1/chat/completions", chat, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"


@contextlib.contextmanager
def running_llm() -> Iterator[FakeLLM]:
    """A FakeLLM serving on its own thread until the block ends."""
    fake = FakeLLM()
    fake.thread.start()
    while not fake.server.started:
        time.sleep(0.01)
    try:
        yield fake
    finally:
        fake.server.should_exit = True
        fake.thread.join(5)
