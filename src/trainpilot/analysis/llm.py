"""The LLM advisor: any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, LM Studio, hosted).

Only the run's compact summary (summary.py), put as advice.py's grounded prompt, and the question
are sent. Answers stream token by token.
Connection failures are retried before the first token; a timeout, an HTTP error or a malformed
stream ends the answer with an `AdvisorError` whose message says what happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import httpx

from trainpilot.analysis.advice import context, messages


class AdvisorError(Exception):
    """The endpoint could not give an answer; the message is for the user."""


@dataclass
class Advisor:
    url: str
    model: str
    key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    retries: int = 2
    max_tokens: int | None = None  # the answer's length limit; None: the endpoint's own
    options: dict[str, Any] = field(default_factory=dict)  # more body fields (temperature, ...)

    def messages(self, summary: dict[str, Any], question: str) -> list[dict[str, str]]:
        return messages(summary, question)

    async def prefill(self, summary: dict[str, Any]) -> None:
        """Have the model read the run before the question comes: llama.cpp keeps what it read of the
        last prompt, so the question's prompt, which starts the same, is read from where this one
        stopped and the answer starts in a second instead of after the whole prompt."""
        import httpx

        system = messages(summary, "")[0]  # the question's own, so its prompt starts with this one
        body = self._body([system, {"role": "user", "content": context(summary)}], max_tokens=1)
        try:
            async with self._client() as client:
                reply = await client.post(self._endpoint, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise AdvisorError(f"the LLM endpoint {self.url} could not read the run: {exc}") from None
        if reply.status_code != 200:
            raise AdvisorError(f"the LLM endpoint answered HTTP {reply.status_code}: {reply.text[:200]}")

    async def stream(self, summary: dict[str, Any], question: str) -> AsyncIterator[str]:
        """Text chunks of the answer as they arrive."""
        import httpx

        body = self._body(self.messages(summary, question), stream=True)
        for attempt in range(self.retries + 1):
            try:
                async with (
                    self._client() as client,
                    client.stream("POST", self._endpoint, json=body, headers=self._headers) as response,
                ):
                    if response.status_code != 200:
                        text = (await response.aread())[:200].decode(errors="replace")
                        raise AdvisorError(f"the LLM endpoint answered HTTP {response.status_code}: {text}")
                    async for chunk in _deltas(response.aiter_lines()):
                        yield chunk
                    return
            except httpx.ConnectError as exc:
                if attempt == self.retries:
                    raise AdvisorError(f"cannot reach the LLM endpoint {self.url}: {exc}") from None
                await asyncio.sleep(0.5 * 2**attempt)
            except httpx.TimeoutException:
                raise AdvisorError(
                    f"the LLM endpoint {self.url} did not answer within {self.timeout_s:g} s"
                ) from None
            except httpx.HTTPError as exc:  # the connection broke mid-answer: the model's process ended
                raise AdvisorError(f"the LLM endpoint {self.url} broke off the answer: {exc}") from None

    def _body(self, chat: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
        """A chat completion request: the answer limit, the options, then what the call needs."""
        limit = {} if self.max_tokens is None else {"max_tokens": self.max_tokens}
        return {"model": self.model, "messages": chat, **limit, **self.options, **fields}

    def _client(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=5.0))

    @property
    def _endpoint(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


async def _deltas(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The content deltas of an OpenAI-style SSE stream; a line that is not one is an error."""
    async for line in lines:
        if not line.strip() or line.startswith(":"):
            continue
        if not line.startswith("data:"):
            raise AdvisorError(f"malformed stream from the LLM endpoint: {line[:80]!r}")
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            choice = orjson.loads(payload)["choices"][0]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise AdvisorError(f"malformed chunk from the LLM endpoint: {payload[:80]!r}") from None
        text = (choice.get("delta") or {}).get("content") or ""
        if text:
            yield text
