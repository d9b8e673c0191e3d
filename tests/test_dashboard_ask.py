"""The run view's ask box in a real browser against a real server: with no LLM (the refusal, then the
rules' answer), with a fake OpenAI-compatible model (the answer streams in, Stop stops it), and the
whole stream contract (note, grounding findings, reason, error) played to the page by Playwright."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, create_run
from tests.fake_llm import ANSWER, SLOW_S, FakeLLM, running_llm
from tests.test_dashboard import Page

XSS = '<img src=x onerror="window.pwned = 1">'


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with running_llm() as fake:
        yield fake


@pytest.fixture(scope="module")
def llm_server(llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose model answers one chunk a second (TRAINPILOT_LLM_URL, TRAINPILOT_LLM_MODEL)."""
    live = LiveServer(tmp_path_factory.mktemp("llm") / "data", llm_url=llm.url("slow"), llm_model="tiny")
    yield live.start()
    live.stop()


def seed(server: LiveServer, run_id: str, lr: float) -> None:
    """A run whose loss falls, or (lr 5.0) blows up after step 30: the detectors find lr_too_high."""
    with server.client() as client:
        create_run(client, run_id)
        loss = [2.3 * 1.2**i if i > 30 and lr > 1 else 2.3 - i * 0.01 for i in range(60)]
        events = [{"seq": i, "step": i, "data": {"train/loss": loss[i], "lr": lr}} for i in range(60)]
        assert client.post(f"/api/runs/{run_id}/events", json={"events": events}).status_code == 200


def ask(page: Page, question: str) -> None:
    page.page.wait_for_selector("#runview:not([hidden]) #advisor-question")
    page.page.fill("#advisor-question", question)
    page.page.press("#advisor-question", "Enter")


def answer(page: Page) -> str:
    return page.page.inner_text("#advisor-answer")


def test_without_an_llm_the_box_says_no_model_answered_and_shows_the_rules_answer_as_text(
    browser: Any, shared_server: LiveServer
) -> None:
    seed(shared_server, "ask-rules", lr=5.0)
    page = Page(browser, f"{shared_server.url}/#run=ask-rules")
    page.page.wait_for_selector("#runview:not([hidden]) #advisor-question")
    with page.page.expect_request(lambda r: r.url.endswith("/api/runs/ask-rules/ask/prepare")) as prepared:
        page.page.focus("#advisor-question")  # a local model would start reading the run now
    assert prepared.value.method == "POST"
    ask(page, f"{XSS} is it healthy?")
    page.page.wait_for_selector("#advisor-status:has-text('answered by the detectors')", timeout=20_000)
    refusal = page.page.inner_text("#advisor-refusal")
    assert refusal.startswith("No model answered") and "--llm-model PATH.gguf" in refusal
    assert "TRAINPILOT_LLM_URL" in refusal
    text = answer(page)
    assert text.startswith("(Rules only: no LLM is configured") and "lr_too_high" in text
    assert XSS in text  # the question came back in the answer, as text
    assert page.page.locator("#advisor img").count() == 0 and page.page.evaluate("window.pwned") is None
    refusal_box = page.page.locator("#advisor-refusal").bounding_box()
    answer_box = page.page.locator("#advisor-answer").bounding_box()
    assert refusal_box and answer_box and refusal_box["y"] < answer_box["y"], "the refusal comes first"
    assert page.page.is_enabled("#advisor-ask") and page.page.is_hidden("#advisor-stop")
    # the server panel says where answers come from
    assert "advisor: the detectors' rules only" in page.page.text_content("#system")
    assert page.errors == [] and page.console_errors == []
    page.page.close()


def test_with_an_llm_the_answer_streams_in_as_it_arrives_and_names_the_model(
    browser: Any, llm_server: LiveServer, llm: FakeLLM
) -> None:
    seed(llm_server, "ask-llm", lr=0.01)
    page = Page(browser, f"{llm_server.url}/#run=ask-llm")
    ask(page, "why is the loss falling?")
    # Part of the answer is on the page while the rest is still coming: Ask waits, Stop is offered.
    page.page.wait_for_function(
        """(last) => {
            const text = document.getElementById("advisor-answer").textContent;
            return text.startsWith("Lower ") && !text.includes(last)
              && document.getElementById("advisor-ask").disabled
              && !document.getElementById("advisor-stop").hidden;
        }""",
        arg=ANSWER[-1],
        timeout=20_000,
    )
    page.page.wait_for_selector("#advisor-status:has-text('answered by tiny')", timeout=20_000)
    assert answer(page) == "".join(ANSWER)
    assert page.page.is_hidden("#advisor-refusal") and page.page.is_enabled("#advisor-ask")
    assert f"advisor: tiny at {llm.url('slow')}" in page.page.text_content("#system")
    asked = [r["body"]["messages"][1]["content"] for r in llm.requests]
    assert any("why is the loss falling?" in content for content in asked)
    assert page.errors == [] and page.console_errors == []
    page.page.close()


def test_stop_ends_a_streaming_answer_where_it_is(browser: Any, llm_server: LiveServer) -> None:
    seed(llm_server, "ask-stop", lr=0.01)
    page = Page(browser, f"{llm_server.url}/#run=ask-stop")
    ask(page, "what now?")
    # an arrow function: the page's CSP refuses the eval() that a bare expression would need
    page.page.wait_for_function("() => document.getElementById('advisor-answer').textContent.length > 0")
    page.page.click("#advisor-stop")
    page.page.wait_for_selector("#advisor-status:text-is('stopped')", timeout=10_000)
    stopped_at = answer(page)
    page.page.wait_for_timeout(int(2.5 * SLOW_S * 1000))  # the rest would have arrived by now
    assert answer(page) == stopped_at and stopped_at != "".join(ANSWER)
    assert page.page.is_enabled("#advisor-ask") and page.page.is_hidden("#advisor-stop")
    assert page.errors == []
    page.page.close()


def frames(*events: tuple[str, dict[str, Any]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def test_the_box_shows_the_note_the_grounding_findings_the_reason_and_errors(
    browser: Any, shared_server: LiveServer, tmp_path: Path
) -> None:
    """The stream contract in full (the server may send less), played to the real page in place of the
    server's answer, with markup in every text field."""
    seed(shared_server, "ask-contract", lr=0.01)
    finding = {"kind": "divergence", "severity": "critical", "step": 40, "message": f"loss is NaN {XSS}"}
    streams = [
        frames(
            ("token", {"text": "It is "}),
            ("token", {"text": f"fine. {XSS}"}),
            ("note", {"text": f"the loss diverged at step 40 {XSS}", "findings": ["divergence"]}),
            ("done", {"source": "llm", "model": "qwen-0.5b", "findings": [finding]}),
        ),
        frames(
            ("token", {"text": "Rules say: diverged."}),
            ("done", {"source": "rules", "reason": "the model file is missing", "findings": []}),
        ),
        frames(("token", {"text": "Half"}), ("error", {"message": "the LLM timed out"})),
    ]
    sent: list[dict[str, Any]] = []

    def fulfill(route: Any) -> None:
        sent.append({"body": route.request.post_data_json, "type": route.request.headers["content-type"]})
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=streams[len(sent) - 1])

    page = Page(browser, f"{shared_server.url}/#run=ask-contract")
    page.page.route("**/api/runs/ask-contract/ask", fulfill)

    ask(page, "is it fine?")
    page.page.wait_for_selector("#advisor-status:has-text('answered by qwen-0.5b')")
    assert answer(page) == f"It is fine. {XSS}"
    assert page.page.inner_text("#advisor-note") == (
        f"Checked against the detectors (divergence): the loss diverged at step 40 {XSS}"
    )
    assert page.page.inner_text("#advisor-findings") == f"[critical] divergence at step 40: loss is NaN {XSS}"
    assert page.page.is_hidden("#advisor-refusal")
    assert sent[0] == {"body": {"question": "is it fine?"}, "type": "application/json"}

    ask(page, "and now?")
    page.page.wait_for_selector("#advisor-status:has-text('answered by the detectors')")
    assert page.page.inner_text("#advisor-refusal").startswith(
        "No model answered: the model file is missing."
    )
    assert answer(page) == "Rules say: diverged." and page.page.is_hidden("#advisor-note")
    assert page.page.inner_text("#advisor-findings") == "none"

    ask(page, "again?")
    page.page.wait_for_selector("#advisor-status:has-text('error: the LLM timed out')")
    assert answer(page) == "Half" and page.page.is_hidden("#advisor-refusal")
    assert page.page.is_hidden("#advisor-grounds")

    assert page.page.locator("#advisor img").count() == 0 and page.page.evaluate("window.pwned") is None
    assert page.errors == [] and page.console_errors == []
    page.page.close()
