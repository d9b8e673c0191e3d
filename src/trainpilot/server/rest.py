"""The REST endpoints of DESIGN.md's table (the SSE stream and the WebSocket live in sse.py, ws.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, field_validator
from starlette.responses import Response, StreamingResponse

from trainpilot.events import Point, Run
from trainpilot.exceptions import InvalidInput, NotFound
from trainpilot.server import system
from trainpilot.server.auth import mint_query_token
from trainpilot.server.errors import JSON
from trainpilot.server.http import READ, WRITE, hub_of, parse_json, read_body
from trainpilot.server.hub import Hub
from trainpilot.server.metrics_batch import decode_metrics
from trainpilot.wire import MAX_STEP, check_run_id, decode_batch

router = APIRouter()
MAX_HISTORY_KEYS = 64


def run_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "project": run.project,
        "name": run.name,
        "status": run.status,
        "config": run.config,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "last_step": run.last_step,
        "last_event_id": run.last_event_id,
    }


def point_dict(point: Point) -> dict[str, Any]:
    return {"value": point.value, "step": point.step, "ts": point.ts}


# -- system ---------------------------------------------------------------------------------------


@router.get("/api/system/health", tags=["system"], summary="Liveness and store/broker health")
async def get_health(request: Request) -> Response:
    body = await system.health(hub_of(request))
    return JSON(body, status_code=503 if body["status"] == "unhealthy" else 200)


@router.get(
    "/api/system/info",
    tags=["system"],
    summary="Version, host, CPU/RAM/GPU, backends, live connections",
    dependencies=READ,
)
async def get_info(request: Request) -> Response:
    return JSON(system.info(hub_of(request)))


@router.get(
    "/metrics", tags=["system"], summary="Prometheus exposition of the server's own health", dependencies=READ
)
async def get_prometheus(request: Request) -> Response:
    return Response(system.exposition(request.app.state.registry), media_type="text/plain; version=0.0.4")


# -- runs -----------------------------------------------------------------------------------------


class RunCreate(BaseModel):
    id: str | None = Field(
        None, max_length=128, description="client-chosen id (idempotent create); generated if absent"
    )
    project: str = Field("default", min_length=1, max_length=200)
    name: str | None = Field(None, max_length=200)
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def storable(cls, config: dict[str, Any]) -> dict[str, Any]:
        """What the store cannot encode is refused here, not found later in the writer thread."""
        try:
            orjson.dumps(config)
        except TypeError as exc:  # an integer beyond 64 bits, found by the fuzzer
            raise ValueError(f"cannot be stored: {exc}") from None
        return config


@router.post(
    "/api/auth/stream-token",
    tags=["system"],
    summary="A short-lived read token for URLs (EventSource and browsers' WebSockets cannot send headers)",
    dependencies=READ,
)
async def stream_token(request: Request) -> Response:
    token, expires = mint_query_token(hub_of(request).settings)
    return JSON({"access_token": token, "expires_at": expires, "scope": "read"})


@router.get("/api/runs", tags=["runs"], summary="List runs, most recently active first", dependencies=READ)
async def list_runs(
    request: Request,
    project: str | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    runs = await hub_of(request).store.list_runs(project=project, status=status, limit=limit)
    return JSON({"runs": [run_dict(r) for r in runs]})


@router.post(
    "/api/runs", tags=["runs"], status_code=201, summary="Create a run (idempotent on id)", dependencies=WRITE
)
async def create_run(request: Request, body: RunCreate) -> Response:
    if body.id is None:
        run_id = f"r-{secrets.token_hex(4)}"
    else:
        try:
            run_id = check_run_id(body.id)
        except InvalidInput as exc:
            raise InvalidInput("id", exc.message) from None
    run, created = await hub_of(request).create_run(run_id, body.project, body.name or run_id, body.config)
    return JSON(run_dict(run), status_code=201 if created else 200)


@router.get(
    "/api/runs/{run_id}", tags=["runs"], summary="One run, with its latest metrics", dependencies=READ
)
async def get_run(request: Request, run_id: str) -> Response:
    store = hub_of(request).store
    run = await store.get_run(run_id)
    current = await store.current(run_id)
    return JSON({**run_dict(run), "metrics": {k: point_dict(p) for k, p in current.items()}})


@router.post(
    "/api/runs/{run_id}/events",
    tags=["runs"],
    summary="Batch ingest, idempotent by (run, seq)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["events"],
                        "properties": {
                            "events": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "seq": {"type": "integer", "minimum": 0},
                                        "kind": {"type": "string"},
                                        "ts": {"type": "number"},
                                        "step": {"type": "integer", "minimum": 0},
                                        "data": {"type": "object"},
                                    },
                                },
                            }
                        },
                    }
                }
            },
        }
    },
    dependencies=WRITE,
)
async def ingest(request: Request, run_id: str) -> Response:
    return await ingest_batch(hub_of(request), request, run_id)


async def ingest_batch(hub: Hub, request: Request, run_id: str, received: float | None = None) -> Response:
    """The body of `POST /api/runs/{id}/events` (also reached without FastAPI: app.Dispatcher)."""
    body = await read_body(request, hub.settings.max_body_bytes)
    events = decode_metrics(check_run_id(run_id), body)  # the usual batch, in C
    if events is None:
        events = decode_batch(run_id, parse_json(body))
    result = await hub.ingest(run_id, events, received)
    return JSON(result.as_dict())


@router.get(
    "/api/runs/{run_id}/insights",
    tags=["runs"],
    summary="The run's analysis findings, oldest first",
    dependencies=READ,
)
async def run_insights(
    request: Request, run_id: str, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> Response:
    store = hub_of(request).store
    await store.get_run(run_id)
    events = await store.read(0, run_id=run_id, kinds=frozenset({"insight"}), limit=limit)
    return JSON({"run_id": run_id, "insights": [{"id": e.id, "ts": e.ts, **e.data} for e in events]})


@router.get(
    "/api/runs/{run_id}/summary",
    tags=["runs"],
    summary="A run in brief: config, per-phase curve statistics, findings (what the LLM advisor sees)",
    dependencies=READ,
)
async def summary(request: Request, run_id: str) -> Response:
    from trainpilot.analysis.summary import run_summary

    return JSON(await run_summary(hub_of(request).store, run_id))


class AskRequest(BaseModel):
    question: str = Field(..., min_length=1, max_length=4000)


@router.post(
    "/api/runs/{run_id}/ask",
    tags=["runs"],
    summary="Ask about a run: an SSE stream of `token` events, a `note` where the answer misses a critical "
    "finding, then `done` with the findings it was grounded on (or `error`)",
    dependencies=READ,
)
async def ask(request: Request, run_id: str, body: AskRequest) -> Response:
    from trainpilot.analysis import advice
    from trainpilot.analysis.llm import AdvisorError
    from trainpilot.analysis.summary import rules_answer, run_summary
    from trainpilot.server.advisor import NOT_CONFIGURED

    hub = hub_of(request)
    summary = await run_summary(hub.store, run_id)
    source = hub.advisors
    findings = advice.relied_on(summary)

    def frame(name: str, payload: dict[str, Any]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(payload))

    async def answer() -> AsyncIterator[bytes]:
        if not source.configured:
            yield frame("token", {"text": rules_answer(summary, body.question)})
            yield frame("done", {"source": "rules", "reason": NOT_CONFIGURED, "findings": findings})
            return
        said: list[str] = []
        try:
            advisor = await source.advisor()
            async for text in advisor.stream(summary, body.question):
                said.append(text)
                yield frame("token", {"text": text})
        except AdvisorError as exc:
            yield frame("error", {"message": str(exc)})
            return
        note = advice.check("".join(said), summary)
        if note is not None:
            missed = [f["kind"] for f in findings if f["severity"] == "critical"]
            yield frame("note", {"text": note, "findings": missed})
        yield frame("done", {"source": "llm", "model": advisor.model, "findings": findings})

    return StreamingResponse(answer(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


class PrepareRequest(BaseModel):
    """Nothing yet: the run is in the path."""


@router.post(
    "/api/runs/{run_id}/ask/prepare",
    tags=["runs"],
    summary="Have the local model load and read the run before a question comes (202; a no-op, "
    "prepared false, for an endpoint or no model)",
    status_code=202,
    dependencies=READ,
)
async def prepare_ask(request: Request, run_id: str, body: PrepareRequest) -> Response:
    """A JSON body (``{}``), as every POST here takes: a page can send none across origins unasked."""
    from trainpilot.analysis.summary import run_summary

    hub = hub_of(request)
    await hub.store.get_run(run_id)  # 404 for a run that is not there, with a model or without
    prepared = hub.advisors.local is not None
    if prepared:
        hub.advisors.prepare_soon(await run_summary(hub.store, run_id))
    return JSON({"prepared": prepared}, status_code=202)


# -- metrics --------------------------------------------------------------------------------------


async def resolve_run(hub: Hub, run_id: str | None) -> Run:
    if run_id is not None:
        return await hub.store.get_run(run_id)
    run = await hub.default_run()
    if run is None:
        raise NotFound("no runs yet: start one with trainpilot.init() or POST /api/runs")
    return run


@router.get(
    "/api/metrics/current",
    tags=["metrics"],
    summary="Latest value of every metric of a run",
    dependencies=READ,
)
async def current_metrics(request: Request, run_id: str | None = None) -> Response:
    hub = hub_of(request)
    run = await resolve_run(hub, run_id)
    current = await hub.store.current(run.id)
    return JSON(
        {
            "run_id": run.id,
            "status": run.status,
            "step": run.last_step,
            "metrics": {k: point_dict(p) for k, p in current.items()},
        }
    )


@router.get(
    "/api/metrics/history",
    tags=["metrics"],
    summary="Downsampled series of a run's metrics",
    dependencies=READ,
)
async def metric_history(
    request: Request,
    run_id: str | None = None,
    keys: Annotated[str | None, Query(description="comma-separated metric names; default all")] = None,
    start_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    end_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 1000,
) -> Response:
    hub = hub_of(request)
    run = await resolve_run(hub, run_id)
    names = [k for k in keys.split(",") if k] if keys else await hub.store.metric_keys(run.id)
    if len(names) > MAX_HISTORY_KEYS:
        raise InvalidInput("keys", f"at most {MAX_HISTORY_KEYS} metrics per request, got {len(names)}")
    if start_step is not None and end_step is not None and end_step < start_step:
        raise InvalidInput("end_step", "must not be below start_step")
    series = await hub.store.history(
        run.id, names, start_step=start_step, end_step=end_step, max_points=max_points
    )
    return JSON(
        {
            "run_id": run.id,
            "max_points": max_points,
            "series": {
                s.key: {
                    "step": [p.step for p in s.points],
                    "value": [p.value for p in s.points],
                    "ts": [p.ts for p in s.points],
                    "total": s.total,
                    "downsampled": s.downsampled,
                }
                for s in series
            },
        }
    )


# -- control --------------------------------------------------------------------------------------


class ControlRequest(BaseModel):
    run_id: str | None = Field(None, description="default: the most recently active run")
    action: str = Field(..., description="pause | resume | stop | checkpoint | set_lr")
    value: float | None = Field(None, description="the new learning rate, for set_lr")


@router.post(
    "/api/training/control",
    tags=["control"],
    status_code=202,
    summary="Send pause, resume, stop, checkpoint or set_lr to a run; returns the command id",
    dependencies=WRITE,
)
async def control(request: Request, body: ControlRequest) -> Response:
    hub = hub_of(request)
    run = await resolve_run(hub, body.run_id)
    client = request.client.host if request.client else "unknown"
    event = await hub.request_control(run.id, body.action, body.value, requested_by=f"http:{client}")
    return JSON(
        {
            "command_id": event.id,
            "run_id": run.id,
            "action": body.action,
            "value": body.value,
            "status": "requested",
        },
        status_code=202,
    )
