"""The LLM advisor against a small OpenAI-compatible server that checks what it is sent; on the app in this
process (whose advisor calls that server over a real socket), and the CLI's `ask` on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Client, LiveServer, create_run, in_process, wait_until
from tests.fake_llm import ANSWER, WRONG, FakeLLM, running_llm
from trainpilot.client.sse import parse
from trainpilot.server.runner import free_port


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with running_llm() as fake:
        yield fake


def ask(client: Client, run_id: str, question: str) -> tuple[str, list[tuple[str, Any]]]:
    events = []
    with client.stream("POST", f"/api/runs/{run_id}/ask", json={"question": question}) as r:
        assert r.status_code == 200
        for event in parse(r.iter_lines()):
            events.append((event.name, event.data))
    text = "".join(d["text"] for name, d in events if name == "token")
    return text, events


def seeded(client: Client) -> None:
    create_run(client, "adv")
    events = [
        {
            "seq": i,
            "step": i,
            "data": {"train/loss": 2.3 * 1.2**i if i > 30 else 2.3 - i * 0.01, "lr": 5.0},
        }
        for i in range(60)
    ]
    client.post("/api/runs/adv/events", json={"events": events})


def test_the_advisor_streams_the_models_answer_and_sends_only_the_summary(
    llm: FakeLLM, tmp_path: Path
) -> None:
    with in_process(tmp_path / "d", llm_url=llm.url("ok"), llm_model="tiny", llm_key="sk-secret") as client:
        seeded(client)
        text, events = ask(client, "adv", "why is my loss rising?")
        assert text == "".join(ANSWER)
        name, done = events[-1]
        assert name == "done" and done["source"] == "llm" and done["model"] == "tiny"
        assert [f["kind"] for f in done["findings"]][:1] == ["lr_too_high"]  # what it was grounded on
        assert "note" not in [name for name, _ in events]  # it named the learning rate
        request = llm.requests[-1]
        assert request["body"]["model"] == "tiny" and request["body"]["stream"] is True
        assert request["auth"] == "Bearer sk-secret"
        system, user = request["body"]["messages"]
        assert system["role"] == "system" and user["role"] == "user"
        assert "why is my loss rising?" in user["content"] and "- train/loss: " in user["content"]
        assert "1. [critical] lr too high (step 31)" in user["content"]  # the findings come first
        assert "   Fix: lower the learning rate 10x (restart with lr around" in user["content"]  # with values
        assert "Cause:" in system["content"] and user["content"].endswith("then Fixes: 1. ...")
        assert len(user["content"]) < 8000  # a compact summary, not the points
        info = client.get("/api/system/info").json()
        assert info["llm"] == {
            "configured": True,
            "source": "endpoint",
            "url": llm.url("ok"),
            "model": "tiny",
        }
        assert "sk-secret" not in json.dumps(info)


def test_an_answer_that_calls_a_diverged_run_healthy_gets_the_finding_restated(
    llm: FakeLLM, tmp_path: Path
) -> None:
    with in_process(tmp_path / "d", llm_url=llm.url("wrong"), llm_model="tiny") as client:
        seeded(client)
        text, events = ask(client, "adv", "is it fine?")
    assert text == "".join(WRONG)  # the model's words, as it said them
    names = [name for name, _ in events]
    assert names[-2:] == ["note", "done"]
    note = events[-2][1]
    assert note["text"].startswith("The detectors disagree with that answer:")
    assert "lr too high (critical)" in note["text"] and "Fix first: " in note["text"]
    assert note["findings"] == ["lr_too_high"]


@pytest.mark.parametrize(
    ("mode", "message"), [("fail", "HTTP 500"), ("garbage", "malformed"), ("down", "cannot reach")]
)
def test_advisor_failures_end_the_stream_with_a_clear_error(
    llm: FakeLLM, tmp_path: Path, mode: str, message: str
) -> None:
    url = llm.url(mode) if mode != "down" else f"http://127.0.0.1:{free_port()}/v1"
    with in_process(tmp_path / "d", llm_url=url, llm_model="tiny") as client:
        seeded(client)
        _, events = ask(client, "adv", "what now?")
    name, data = events[-1]
    assert name == "error" and message in data["message"]


def test_without_an_llm_the_rules_answer_and_say_so(app_client: TestClient) -> None:
    seeded(app_client)
    text, events = ask(app_client, "adv", "is it healthy?")
    assert text.startswith("(Rules only: no LLM is configured")
    name, done = events[-1]
    assert "lr_too_high" in text and name == "done" and done["source"] == "rules"
    assert done["reason"].startswith("no LLM is configured: start the server with --llm-model PATH.gguf")
    assert done["findings"][0]["kind"] == "lr_too_high"
    assert app_client.post("/api/runs/adv/ask", json={"question": ""}).status_code == 422
    prepared = app_client.post("/api/runs/adv/ask/prepare", json={})
    assert prepared.status_code == 202 and prepared.json() == {"prepared": False}  # nothing to load
    assert app_client.post("/api/runs/ghost/ask/prepare", json={}).status_code == 404
    assert app_client.post("/api/runs/adv/ask/prepare").status_code == 422  # a JSON body, as every POST
    assert app_client.post("/api/runs/ghost/ask", json={"question": "x"}).status_code == 404


def test_trainpilot_ask_prints_the_answer(server: LiveServer) -> None:
    import subprocess
    import sys

    with server.client() as client:
        seeded(client)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainpilot.cli",
            "ask",
            "adv",
            "what happened?",
            "--server",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Rules only" in result.stdout and "lr_too_high" in result.stdout


def test_serious_findings_get_a_short_llm_explanation(llm: FakeLLM, tmp_path: Path) -> None:
    with in_process(tmp_path / "d", llm_url=llm.url("ok"), llm_model="tiny") as client:
        seeded(client)

        def explanations() -> list[dict[str, Any]]:
            found = client.get("/api/runs/adv/insights").json()["insights"]
            return [i for i in found if i["kind"] == "explanation"]

        wait_until(lambda: bool(explanations()), what="an explanation")
        insights = client.get("/api/runs/adv/insights").json()["insights"]
        (first,) = explanations()[:1]
    explained = next(i for i in insights if i["id"] == first["explains"])
    assert explained["severity"] in ("warning", "critical") and first["explains_kind"] == explained["kind"]
    assert first["message"] == "".join(ANSWER) and first["source"] == "llm"
    question = llm.requests[-1]["body"]["messages"][1]["content"]
    assert explained["kind"] in question
