"""The MCP server through the official SDK's own client: over /mcp (streamable HTTP) and over stdio."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from tests.conftest import LiveServer, sse_events

TOKEN, READ = "mcp-test-token", "mcp-read-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOOLS = {"list_runs", "run_summary", "current_metrics", "metric_history", "run_insights", "control_run"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with a write token and one run whose loss explodes after 60 steps of training."""
    server = LiveServer(tmp_path_factory.mktemp("mcp") / "data", token=TOKEN, read_token=READ).start()
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        assert (
            c.post("/api/runs", json={"id": "mcp-run", "project": "p", "config": {"lr": 3}}).status_code
            == 201
        )
        events = [
            {"seq": s, "step": s, "data": {"train/loss": 2.3 - 0.01 * s if s < 60 else 50.0 * s, "lr": 3.0}}
            for s in range(120)
        ]
        assert c.post("/api/runs/mcp-run/events", json={"events": events}).status_code == 200
    yield server
    server.stop()


@asynccontextmanager
async def over_http(url: str, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url + "/mcp", http_client=http)) as client,
    ):
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    return await client.call_tool(tool, arguments)


def payload(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def test_tools_are_listed_with_descriptions_and_typed_arguments(live: LiveServer) -> None:
    async def scenario() -> None:
        async with over_http(live.url) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 30, tool.name
        history = tools["metric_history"].input_schema
        assert set(history["required"]) == {"run_id", "keys"}
        assert history["properties"]["max_points"]["maximum"] == 1000
        action = json.dumps(tools["control_run"].input_schema["properties"]["action"])
        assert all(a in action for a in ("pause", "resume", "stop", "checkpoint", "set_lr"))
        assert tools["list_runs"].annotations is not None and tools["list_runs"].annotations.read_only_hint

    asyncio.run(scenario())


def test_read_tools_return_bounded_answers(live: LiveServer) -> None:
    async def scenario() -> None:
        async with over_http(live.url, READ) as client:
            runs = payload(await call(client, "list_runs", project="p"))["runs"]
            assert [r["id"] for r in runs] == ["mcp-run"]

            summary = payload(await call(client, "run_summary", run_id="mcp-run"))
            assert summary["config"] == {"lr": 3}
            assert summary["metrics"]["train/loss"]["points"] == 120

            current = payload(await call(client, "current_metrics", run_id="mcp-run", prefix="train/"))
            assert current["metrics"]["train/loss"]["step"] == 119 and "lr" not in current["metrics"]

            history = payload(
                await call(
                    client, "metric_history", run_id="mcp-run", keys=["train/loss", "nope"], max_points=10
                )
            )
            series = history["series"]["train/loss"]
            assert len(series["step"]) <= 10 and series["total"] == 120 and series["downsampled"]
            assert series["step"][-1] == 119 and history["missing"] == ["nope"]

            insights = payload(await call(client, "run_insights", run_id="mcp-run", limit=1))
            assert len(insights["insights"]) == 1 and insights["left_out"] >= 1
            kinds = {
                i["kind"] for i in payload(await call(client, "run_insights", run_id="mcp-run"))["insights"]
            }
            assert "lr_too_high" in kinds  # the early divergence of a run with its lr logged

    asyncio.run(scenario())


def test_bad_arguments_and_unknown_runs_are_tool_errors(live: LiveServer) -> None:
    async def scenario() -> None:
        async with over_http(live.url, READ) as client:
            missing = await call(client, "run_summary", run_id="no-such-run")
            too_many = await call(client, "metric_history", run_id="mcp-run", keys=["a"], max_points=5000)
        assert missing.is_error and "404" in missing.content[0].text  # type: ignore[union-attr]
        assert too_many.is_error and "max_points" in too_many.content[0].text  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_reads_need_a_token_and_control_the_write_token(live: LiveServer) -> None:
    async def scenario() -> tuple[list[CallToolResult], CallToolResult]:
        async with over_http(live.url) as client:
            unread = await call(client, "list_runs")
            refused = await call(client, "control_run", run_id="mcp-run", action="pause")
        async with over_http(live.url, READ) as client:
            forbidden = await call(client, "control_run", run_id="mcp-run", action="pause")
        async with over_http(live.url, TOKEN) as client:
            accepted = await call(client, "control_run", run_id="mcp-run", action="set_lr", value=0.01)
        return [unread, refused, forbidden], accepted

    (unread, refused, forbidden), accepted = asyncio.run(scenario())
    assert unread.is_error and "401" in unread.content[0].text  # type: ignore[union-attr]
    assert refused.is_error and "401" in refused.content[0].text  # type: ignore[union-attr]
    assert forbidden.is_error and "403" in forbidden.content[0].text  # type: ignore[union-attr]
    command = payload(accepted)
    assert command["action"] == "set_lr" and command["value"] == 0.01
    after = {"after": str(command["command_id"] - 1), "kinds": "control"}
    stored = sse_events(live.url, after, headers=AUTH, count=1)
    assert stored[0].data["data"]["value"] == 0.01  # type: ignore[index]
    # exactly one control event: the refused call stored nothing
    everything = sse_events(live.url, {"after": "0", "kinds": "control"}, headers=AUTH, count=1)
    assert everything[0].data["id"] == command["command_id"]  # type: ignore[index]


def test_stdio_server_calls_the_server_by_url(live: LiveServer, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "trainpilot.cli", "mcp", "--server", live.url],
        env={**os.environ, "TRAINPILOT_TOKEN": TOKEN},
    )

    async def scenario() -> tuple[list[str], CallToolResult]:
        async with Client(params) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            checkpoint = await call(client, "control_run", run_id="mcp-run", action="checkpoint")
        return names, checkpoint

    names, checkpoint = asyncio.run(scenario())
    assert set(names) == TOOLS
    assert payload(checkpoint)["action"] == "checkpoint"


def test_stdio_server_says_when_the_server_is_down(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "trainpilot.cli", "mcp", "--server", "http://127.0.0.1:9"]
    )

    async def scenario() -> CallToolResult:
        async with Client(params) as client:
            return await call(client, "list_runs")

    result = asyncio.run(scenario())
    assert result.is_error and "cannot reach the trainpilot server" in result.content[0].text  # type: ignore[union-attr]
