"""MCP access to training: an assistant lists runs, reads summaries, metrics and findings, controls runs.

Built with the official `mcp` SDK. Each tool is a thin call to the REST API through `client.rest`, so
validation, auth, bounds and error messages are the server's own and nothing is written twice:
`trainpilot mcp` (stdio) calls a server by URL; the server mounts the same tools at ``/mcp``
(streamable HTTP) and calls its own API in process.
On a server with tokens, reading needs a token and control the write token: on stdio from ``--token``
(TRAINPILOT_TOKEN, else TRAINPILOT_READ_TOKEN), over HTTP from the MCP request's own ``Authorization``
header.

Outputs are bounded for a model's context: history is downsampled (at most 1000 points a metric, 16
metrics a call), metric and finding lists are capped and say how many were left out.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from trainpilot.client.rest import ApiClient, run_path
from trainpilot.events import Action, RunStatus
from trainpilot.exceptions import TransportError
from trainpilot.version import __version__

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
MAX_CURRENT = 200

INSTRUCTIONS = (
    "trainpilot observes and controls machine-learning training runs. Start with list_runs; "
    "run_summary gives a run's config, per-phase curve statistics and the detectors' findings in a few "
    "hundred tokens; metric_history gives downsampled curves; run_insights the findings in full. "
    "control_run pauses, resumes, stops, checkpoints or changes the learning rate of a live run."
)


def build(api: ApiClient) -> MCPServer:
    """The MCP server, its tools calling the trainpilot REST API through `api`."""
    # WARNING: the SDK configures the root logger, and at INFO every in-process API call would be logged.
    server = MCPServer("trainpilot", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")

    async def call(method: str, path: str, ctx: Context | None = None, **kwargs: Any) -> Any:
        try:
            return await api.acall(method, path, headers=_forwarded(ctx), **kwargs)
        except TransportError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(annotations=READ)
    async def list_runs(
        ctx: Context,
        status: Annotated[RunStatus | None, Field(description="only runs in this status")] = None,
        project: Annotated[str | None, Field(description="only runs of this project")] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> dict[str, Any]:
        """Runs, most recently active first: id, project, name, status, last step, times."""
        params = {"limit": limit, "status": status, "project": project}
        body = await call("GET", "/api/runs", ctx, params={k: v for k, v in params.items() if v is not None})
        keep = ("id", "project", "name", "status", "last_step", "created_at", "updated_at")
        return {"runs": [{k: run[k] for k in keep} for run in body["runs"]]}

    @server.tool(annotations=READ)
    async def run_summary(
        ctx: Context,
        run_id: Annotated[str, Field(description="the run's id (see list_runs)")],
    ) -> dict[str, Any]:
        """A run in brief: config, status, per-metric statistics for the early, middle and late thirds
        of training (mean, min, max, last) and the detectors' findings. Start here to explain a run."""
        summary: dict[str, Any] = await call("GET", run_path(run_id, "/summary"), ctx)
        return summary

    @server.tool(annotations=READ)
    async def current_metrics(
        ctx: Context,
        run_id: Annotated[str | None, Field(description="default: the most recently active run")] = None,
        prefix: Annotated[str | None, Field(description="only metrics whose name starts with this")] = None,
    ) -> dict[str, Any]:
        """The latest value and step of each metric of a run (at most 200 metrics)."""
        body = await call("GET", "/api/metrics/current", ctx, params={"run_id": run_id} if run_id else {})
        names = sorted(k for k in body["metrics"] if prefix is None or k.startswith(prefix))
        return {
            "run_id": body["run_id"],
            "status": body["status"],
            "step": body["step"],
            "metrics": {k: body["metrics"][k] for k in names[:MAX_CURRENT]},
            "left_out": max(0, len(names) - MAX_CURRENT),
        }

    @server.tool(annotations=READ)
    async def metric_history(
        ctx: Context,
        run_id: Annotated[str, Field(description="the run's id")],
        keys: Annotated[list[str], Field(min_length=1, max_length=16, description="metric names")],
        max_points: Annotated[int, Field(ge=2, le=1000, description="points per metric")] = 200,
        start_step: Annotated[int | None, Field(ge=0)] = None,
        end_step: Annotated[int | None, Field(ge=0)] = None,
    ) -> dict[str, Any]:
        """Curves of a run, downsampled to max_points per metric (spikes and the last point kept).
        Each series has step and value lists, the stored point count and whether it was downsampled."""
        params: dict[str, Any] = {"run_id": run_id, "keys": ",".join(keys), "max_points": max_points}
        params.update(
            {k: v for k, v in (("start_step", start_step), ("end_step", end_step)) if v is not None}
        )
        body = await call("GET", "/api/metrics/history", ctx, params=params)
        series = {
            key: {k: s[k] for k in ("step", "value", "total", "downsampled")}
            for key, s in body["series"].items()
            if s["total"]
        }
        return {"run_id": run_id, "series": series, "missing": [k for k in keys if k not in series]}

    @server.tool(annotations=READ)
    async def run_insights(
        ctx: Context,
        run_id: Annotated[str, Field(description="the run's id")],
        limit: Annotated[int, Field(ge=1, le=200, description="the most recent findings to return")] = 50,
    ) -> dict[str, Any]:
        """The detectors' findings for a run, newest last: kind, severity, step, evidence, suggestion."""
        found = (await call("GET", run_path(run_id, "/insights"), ctx))["insights"]
        return {"run_id": run_id, "insights": found[-limit:], "left_out": max(0, len(found) - limit)}

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    async def control_run(
        run_id: Annotated[str, Field(description="the run's id")],
        action: Action,
        ctx: Context,
        value: Annotated[float | None, Field(gt=0, description="the new learning rate, for set_lr")] = None,
    ) -> dict[str, Any]:
        """Send a command to a live run. The run applies it at its next step and acknowledges it on its
        event stream; stop ends training for good. Needs the server's write token if it has one."""
        body = {"run_id": run_id, "action": action, **({"value": value} if value is not None else {})}
        result: dict[str, Any] = await call("POST", "/api/training/control", ctx, json=body)
        return result

    return server


def _forwarded(ctx: Context | None) -> dict[str, str]:
    """Over HTTP, the caller's own credentials, and none if it sent none (the in-process API checks
    them); over stdio nothing, so the configured token applies."""
    incoming = ctx.headers if ctx is not None else None
    if incoming is None:
        return {}
    for name in ("authorization", "x-trainpilot-token"):
        if incoming.get(name):
            return {name: incoming[name]}
    return {}


def remote(server_url: str, token: str | None) -> MCPServer:
    """For `trainpilot mcp`: tools that call the server at server_url."""
    return build(ApiClient(server_url, token, timeout_s=30.0))


def in_process(app: Any) -> MCPServer:
    """For the server's own ``/mcp``: tools that call its REST app in process, without a socket."""
    return build(ApiClient("http://trainpilot", transport=httpx.ASGITransport(app=app, client=("mcp", 0))))
