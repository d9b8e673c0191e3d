"""Which LLM answers for this server: the endpoint the settings name, else its own local model, else none.

An endpoint (``TRAINPILOT_LLM_URL`` + ``TRAINPILOT_LLM_MODEL``: Ollama, vLLM, a llama.cpp server,
a hosted API) wins when set. Otherwise ``--llm-model PATH.gguf`` (``TRAINPILOT_LLM_MODEL_PATH``)
gives the server a model of its own (analysis/runtime.py), loaded on the first question and
stopped with the server. With neither, the ask endpoint answers from the rules and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from trainpilot.analysis.llm import Advisor, AdvisorError
from trainpilot.analysis.runtime import LOCAL_OPTIONS, LocalModel
from trainpilot.exceptions import ConfigError
from trainpilot.settings import Settings

NOT_CONFIGURED = (
    "no LLM is configured: start the server with --llm-model PATH.gguf (pip install 'trainpilot[llm]'), "
    "or set TRAINPILOT_LLM_URL and TRAINPILOT_LLM_MODEL to an OpenAI-compatible endpoint"
)


def check_model(settings: Settings) -> None:
    """Refuse, at start, a --llm-model that names no file and no packaged model: a typo should not wait
    for the first question to show."""
    from trainpilot.analysis.models import unknown

    if settings.llm_model_path and not settings.llm_url and (why := unknown(settings.llm_model_path)):
        raise ConfigError(f"--llm-model (TRAINPILOT_LLM_MODEL_PATH): {why}")


def describe(settings: Settings) -> str | None:
    """The banner's line on the advisor: which LLM answers."""
    if settings.llm_url:
        return f"{settings.llm_model or '(no TRAINPILOT_LLM_MODEL)'} at {settings.llm_url}"
    if settings.llm_model_path:
        return f"local model {settings.llm_model_path} (loads on the first question)"
    return None


class AdvisorSource:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local: LocalModel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.llm_model_path and not settings.llm_url:
            self.local = LocalModel(
                settings.llm_model_path,
                threads=settings.llm_threads,
                ctx=settings.llm_ctx,
                log_dir=settings.data_dir,
            )

    @property
    def configured(self) -> bool:
        return self.local is not None or bool(self.settings.llm_url and self.settings.llm_model)

    @property
    def explains(self) -> bool:
        """Serious findings get an explanation of their own from an endpoint only: a local model
        would load and take the CPU from the training on the same machine without anyone asking, and
        hold its one slot while someone does ask."""
        return self.local is None and self.configured

    @property
    def model(self) -> str:
        return self.local.name if self.local is not None else self.settings.llm_model

    async def advisor(self, timeout_s: float = 120.0) -> Advisor:
        """The advisor to ask, the local model loaded first; `AdvisorError` says why there is none."""
        settings = self.settings
        if self.local is not None:
            url = await self.local.start()
            return Advisor(
                url,
                self.local.name,
                self.local.key,
                timeout_s=timeout_s,
                max_tokens=settings.llm_max_tokens,
                options=dict(LOCAL_OPTIONS),
            )
        if not self.configured:
            raise AdvisorError(NOT_CONFIGURED)
        return Advisor(
            settings.llm_url,
            settings.llm_model,
            settings.llm_key,
            timeout_s=timeout_s,
            max_tokens=settings.llm_max_tokens,
        )

    def prepare_soon(self, summary: dict[str, Any]) -> None:
        """Load the local model and have it read the run ahead of a question (the ask box asks when it
        gets the focus), in the background: the request does not wait for a model to load. Failures
        are left for the question itself to report."""
        task = asyncio.create_task(self._prepare(summary), name="trainpilot-llm-prepare")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prepare(self, summary: dict[str, Any]) -> None:
        with contextlib.suppress(AdvisorError):
            await (await self.advisor()).prefill(summary)

    def info(self) -> dict[str, Any]:
        """For /api/system/info: where answers come from, and the local model's state."""
        if self.local is not None:
            return {
                "configured": True,
                "source": "local",
                "model": self.local.name,
                "state": self.local.state,
                "threads": self.local.threads,
                "ctx": self.local.ctx,
                "max_tokens": self.settings.llm_max_tokens,
            }
        return {
            "configured": self.configured,
            "source": "endpoint" if self.configured else None,
            "url": self.settings.llm_url or None,
            "model": self.settings.llm_model or None,
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.local is not None:
            await self.local.close()
