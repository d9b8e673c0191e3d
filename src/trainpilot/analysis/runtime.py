"""A local LLM for the advisor: llama.cpp's own OpenAI-compatible server (the `xllamacpp` wheel) for one
GGUF file (a path, or a packaged model's name: models.py), in a child process on a loopback port that
only its owner can use.

    model = LocalModel("qwen2.5-coder-1.5b", threads=2)   # or a .gguf file's path
    url = await model.start()          # loads on first use: a few seconds for a 1.5B model
    Advisor(url, model.name, model.key)
    await model.close()                # with the server

A child process, not the server's own threads: a model that fails to load, or llama.cpp crashing,
ends that process and the advisor's answer, never the server. The child listens on 127.0.0.1 on a
port the OS picks and refuses every request without its random API key, so another program or a
web page that finds the port cannot use the model. It exits when its stdin closes, which happens
when the owner stops it or dies: no orphaned model holding gigabytes.

Run as ``python -m trainpilot.analysis.runtime PATH --threads N --ctx N`` it is that child: it prints
``READY <url>`` once the model is loaded and serves until stdin closes (the key comes in the
environment, not on a command line others can read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from trainpilot.analysis.llm import AdvisorError
from trainpilot.analysis.models import MODELS, ModelNotFound, resolve
from trainpilot.extras import extra

KEY_ENV = "TRAINPILOT_LLM_RUNTIME_KEY"
READY = "READY "
# A local model answers deterministically: the same run and question, the same advice.
LOCAL_OPTIONS: dict[str, Any] = {"temperature": 0.0}
LOAD_TIMEOUT_S = 300.0  # a cold 1.5B model from a slow disk; a warm one loads in seconds


class LocalModelError(AdvisorError):
    """The local model could not be started; the message says why and what to do."""


class LocalModel:
    """One GGUF file served by a child process, started by the first `start()` and stopped by `close()`."""

    def __init__(self, path: str, *, threads: int = 0, ctx: int = 4096, log_dir: str | None = None) -> None:
        self.path = path
        self.threads = threads or default_threads()
        self.ctx = ctx
        self.name = path if path in MODELS else Path(path).name.removesuffix(".gguf")
        self.key = secrets.token_urlsafe(24)
        self.log_path = Path(log_dir or ".") / "llm-runtime.log"
        self.state = "not started"  # not started | loading | ready | failed: <why> | stopped
        self._url: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._log_from = 0  # where this start's lines begin in the log
        self._lock = asyncio.Lock()

    async def start(self) -> str:
        """The base URL (``http://127.0.0.1:<port>/v1``), loading the model first if it is not loaded."""
        async with self._lock:
            if self._url is not None and self._process is not None and self._process.returncode is None:
                return self._url
            self._url = None
            self.state = "loading"
            try:
                self._url = await self._spawn()
            except LocalModelError as exc:
                self.state = f"failed: {exc}"
                raise
            self.state = "ready"
            return self._url

    async def _spawn(self) -> str:
        check_installed()
        try:
            path = await asyncio.to_thread(resolve, self.path)  # a packaged model's parts joined once
        except ModelNotFound as exc:
            raise LocalModelError(str(exc)) from None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "trainpilot.analysis.runtime", path]
        command += ["--threads", str(self.threads), "--ctx", str(self.ctx)]
        with open(self.log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, KEY_ENV: self.key},
            )
        self._process = process
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), LOAD_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise LocalModelError(f"{self.name} did not load within {LOAD_TIMEOUT_S:g} s") from None
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY):
            await self.close()
            raise LocalModelError(
                f"{self.name} did not load: {self._log_tail() or text or 'the runtime exited'}"
            )
        return text[len(READY) :].rstrip("/") + "/v1"

    def _log_tail(self) -> str:
        """This start's last error line in the runtime's log (which keeps earlier starts), for the message."""
        with contextlib.suppress(OSError):
            with self.log_path.open("rb") as log:
                log.seek(self._log_from)
                text = log.read().decode(errors="replace")
            lines = [x for x in text.splitlines() if x.strip()]
            errors = [x for x in lines if " E " in x or "error" in x.lower()]
            return (errors or lines or [""])[-1][-300:]
        return ""

    async def close(self) -> None:
        """Stop the child: its stdin closes, it exits; after 5 s it is killed."""
        process, self._process, self._url = self._process, None, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self.state == "ready":
            self.state = "stopped"


def default_threads() -> int:
    """Half the cores, at least one: the server and the training keep the rest."""
    return max(1, (os.cpu_count() or 2) // 2)


def check_installed() -> None:
    """The runtime is the `llm` extra; say so before a child process fails on the import."""
    import importlib.util

    if importlib.util.find_spec("xllamacpp") is None:
        raise LocalModelError("the local model needs llama.cpp's runtime: pip install 'trainpilot[llm]'")


def serve(path: str, threads: int, ctx: int) -> None:
    """The child: load, print ``READY <url>``, serve until stdin closes."""
    with extra("llm", "trainpilot serve --llm-model"):
        import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = path
    params.n_ctx = ctx
    params.n_parallel = 1  # one answer at a time: a second waits rather than halving both
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free one
    params.api_keys = [os.environ[KEY_ENV]]
    params.ui = False  # no web UI on the port: nothing there for a browser
    server = xllamacpp.Server(params)  # returns once the model is loaded and the port listens
    print(READY + server.listening_address, flush=True)
    sys.stdin.read()  # until the owner closes it, or dies
    del server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trainpilot.analysis.runtime")
    parser.add_argument("path")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    serve(args.path, args.threads, args.ctx)


if __name__ == "__main__":
    main()
