"""Every REST endpoint, on the app in this process (memory store): the happy path and the bad-input path."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from tests.conftest import APP_URL, Client, app_socket, create_run, in_process, metrics_batch, sse_events
from trainpilot.client.sse import ServerEvent, parse
from trainpilot.version import __version__


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """The response is `status` with the agreed body ``{"error": {"code", "message"[, "field"]}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if field is not None:
        assert error.get("field") == field, error
    return error


def stored_events(client: TestClient, run_id: str) -> list[ServerEvent]:
    """Every event stored for `run_id`, read back from the SSE replay up to an end mark added now."""
    mark = client.post(f"/api/runs/{run_id}/events", json={"events": [{"kind": "log", "data": {}}]})
    last_id = mark.json()["last_id"]
    out: list[ServerEvent] = []
    params = {"after": "0", "run_id": run_id}
    with client.stream("GET", "/api/stream/metrics", params=params) as response:
        for event in parse(response.iter_lines()):
            if event.id == last_id:
                return out
            out.append(event)
    raise AssertionError(f"the stream of {run_id} ended before its end mark {last_id}")


def post_events(client: Client, run_id: str, events: object) -> dict[str, Any]:
    """Ingest `events` (a list, or a whole ``{"events": [...]}`` body) and return the 200 answer."""
    body = events if isinstance(events, dict) else {"events": events}
    response = client.post(f"/api/runs/{run_id}/events", json=body)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finish(client: Client, run_id: str) -> None:
    post_events(client, run_id, [{"kind": "status", "data": {"status": "finished"}}])


@pytest.fixture
def client(shared_app: TestClient) -> TestClient:
    """The module's one app: each test adds runs of its own."""
    return shared_app


@pytest.fixture
def small_body_app(tmp_path: Path) -> Iterator[TestClient]:
    with in_process(tmp_path, max_body_bytes=1000) as app:
        yield app


@pytest.fixture
def token_app(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[TestClient]:
    """A server with a write and a read token, whose log (all of trainpilot's, to DEBUG) the test may read."""
    caplog.set_level(logging.DEBUG, logger="trainpilot")
    with in_process(tmp_path, token="s3cret", read_token="look") as app:
        yield app


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, TestClient]]:
    """A fresh app on each store backend (postgres where reachable, else skipped), and its name."""
    store = {
        "memory": lambda: "memory://",
        "sqlite": lambda: f"sqlite:///{tmp_path / 'trainpilot.db'}",
        "postgres": lambda: request.getfixturevalue("postgres_url"),
    }[request.param]()
    with in_process(tmp_path, store=store) as app:
        yield request.param, app


# -- system -----------------------------------------------------------------------------------------


def test_health_reports_the_store_and_broker_ok(backend_app: tuple[str, TestClient]) -> None:
    backend, client = backend_app
    response = client.get("/api/system/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["store"]["ok"] is True and health["store"]["backend"] == backend
    assert health["broker"] == {"ok": True, "backend": "memory"}
    assert health["uptime_s"] >= 0


def wait_for_ws_subscribers(client: TestClient, count: int, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = client.get("/api/system/info").json()
        if info["connections"]["ws"] == count or time.monotonic() > deadline:
            return info
        time.sleep(0.02)


def test_info_reports_version_cpu_memory_and_live_connection_counts(
    backend_app: tuple[str, TestClient],
) -> None:
    backend, client = backend_app
    info = client.get("/api/system/info").json()
    assert info["version"] == __version__
    assert info["cpu"]["count"] >= 1 and 0 <= info["cpu"]["percent"] <= 100 * info["cpu"]["count"]
    memory = info["memory"]
    assert memory["total_bytes"] >= memory["available_bytes"] > 0 and memory["process_rss_bytes"] > 0
    assert info["backends"] == {"store": backend, "broker": "memory"}
    assert isinstance(info["gpus"], list) and info["host"]["python"]
    before = info["connections"]["ws"]
    assert set(info["connections"]) == {"sse", "ws"}
    with app_socket(client) as ws:
        ws.send('{"op": "subscribe"}')
        assert '"subscribed"' in ws.recv(timeout=5)
        assert wait_for_ws_subscribers(client, before + 1)["connections"]["ws"] == before + 1
    assert wait_for_ws_subscribers(client, before)["connections"]["ws"] == before


def counter(exposition: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", exposition, re.MULTILINE)
    assert match, f"{name} not in the exposition"
    return float(match.group(1))


def test_prometheus_exposition_counts_ingested_events(client: TestClient) -> None:
    run_id = unique("prom")
    create_run(client, run_id)
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    post_events(client, run_id, metrics_batch(0, 5))
    post_events(client, run_id, metrics_batch(0, 5))
    after = client.get("/metrics").text
    ingested = "trainpilot_events_ingested_total"
    assert counter(after, ingested) - counter(before.text, ingested) == 5
    assert (
        counter(after, "trainpilot_duplicates_total") - counter(before.text, "trainpilot_duplicates_total")
        == 5
    )
    assert 'trainpilot_subscribers{transport="sse"}' in after
    assert counter(after, "trainpilot_process_rss_bytes") > 0


def test_system_endpoints_answer_wrong_methods_and_unknown_paths_with_json_errors(
    client: TestClient,
) -> None:
    assert_error(client.post("/api/system/health"), 405)
    assert_error(client.delete("/api/system/info"), 405)
    assert_error(client.get("/api/system/nothing"), 404)
    assert_error(client.post("/api/stream/metrics"), 405)


def test_docs_and_openapi_describe_every_endpoint(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert {
        "/api/stream/metrics",
        "/api/system/health",
        "/api/system/info",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/events",
        "/api/metrics/current",
        "/api/metrics/history",
        "/api/training/control",
    } <= set(schema["paths"])


# -- runs -------------------------------------------------------------------------------------------


def test_create_run_is_idempotent_on_id(client: TestClient) -> None:
    run_id = unique("create")
    first = client.post("/api/runs", json={"id": run_id, "project": "p", "config": {"lr": 0.1}})
    assert first.status_code == 201, first.text
    assert first.json()["id"] == run_id and first.json()["status"] == "created"
    again = client.post("/api/runs", json={"id": run_id, "project": "other", "config": {"lr": 9}})
    assert again.status_code == 200
    assert again.json()["project"] == "p" and again.json()["config"] == {"lr": 0.1}
    got = client.get(f"/api/runs/{run_id}")
    assert got.status_code == 200
    assert (
        got.json()["config"] == {"lr": 0.1} and got.json()["name"] == run_id and got.json()["metrics"] == {}
    )


def test_create_run_without_an_id_generates_one(client: TestClient) -> None:
    project = unique("gen")
    first = client.post("/api/runs", json={"project": project})
    second = client.post("/api/runs", json={"project": project})
    listed = client.get("/api/runs", params={"project": project}).json()["runs"]
    assert first.status_code == second.status_code == 201
    assert first.json()["id"].startswith("r-") and first.json()["id"] != second.json()["id"]
    assert {r["id"] for r in listed} == {first.json()["id"], second.json()["id"]}


def test_list_runs_filters_by_project_and_status_with_a_limit(client: TestClient) -> None:
    project = unique("list")
    for name in ("a", "b", "c"):
        create_run(client, f"{project}-{name}", project=project)
    finish(client, f"{project}-b")
    runs = client.get("/api/runs", params={"project": project}).json()["runs"]
    assert {r["id"] for r in runs} == {f"{project}-{n}" for n in "abc"}
    assert runs[0]["id"] == f"{project}-b"  # most recently active first
    finished = client.get("/api/runs", params={"project": project, "status": "finished"}).json()
    assert [r["id"] for r in finished["runs"]] == [f"{project}-b"]
    assert len(client.get("/api/runs", params={"project": project, "limit": 2}).json()["runs"]) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"project": ""}, "project"),
        ({"project": "p", "config": "nope"}, "config"),
        ({"project": "p", "name": "n" * 201}, "name"),
        ({"id": "a/b"}, "id"),
        ({"id": ""}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"id": 5}, "id"),
        ({"project": "p", "config": {"seed": 2**70}}, "config"),  # found by the fuzzer: it killed the writer
    ],
)
def test_a_bad_run_body_is_refused_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    project = unique("badrun")
    assert_error(client.post("/api/runs", json={"project": project, **body}), 422, field)
    assert client.get("/api/runs", params={"project": project}).json()["runs"] == []


def test_create_run_with_invalid_json_is_a_400(client: TestClient) -> None:
    response = client.post("/api/runs", content=b"{nope", headers={"content-type": "application/json"})
    assert assert_error(response, 400)["code"] == "bad_json"


@pytest.mark.parametrize("limit", ["0", "1001", "many"])
def test_list_runs_refuses_a_bad_limit(client: TestClient, limit: str) -> None:
    assert_error(client.get("/api/runs", params={"limit": limit}), 422, "limit")


def test_an_unknown_run_is_a_404(client: TestClient) -> None:
    error = assert_error(client.get(f"/api/runs/{unique('ghost')}"), 404)
    assert error["code"] == "not_found"


# -- ingest -----------------------------------------------------------------------------------------


def test_ingest_stores_a_batch_and_updates_the_run(client: TestClient) -> None:
    run_id = unique("ingest")
    create_run(client, run_id)
    result = post_events(client, run_id, metrics_batch(0, 5))
    run = client.get(f"/api/runs/{run_id}").json()
    events = stored_events(client, run_id)
    assert result["stored"] == 5 and result["duplicates"] == 0
    assert run["last_step"] == 4 and run["last_event_id"] == result["last_id"]
    assert run["metrics"]["train/loss"]["value"] == pytest.approx(1 / 5)
    assert [e.name for e in events] == ["status"] + ["metrics"] * 5
    assert events[-1].id == result["last_id"]


def test_same_batch_twice_is_stored_once(client: TestClient) -> None:
    run_id = unique("dup")
    create_run(client, run_id)
    first = client.post(f"/api/runs/{run_id}/events", json=metrics_batch(0, 50)).json()
    second = client.post(f"/api/runs/{run_id}/events", json=metrics_batch(0, 50)).json()
    overlap = client.post(f"/api/runs/{run_id}/events", json=metrics_batch(40, 20)).json()
    series = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "train/loss"}).json()
    events = stored_events(client, run_id)
    assert (first["stored"], first["duplicates"]) == (50, 0)
    assert (second["stored"], second["duplicates"], second["last_id"]) == (0, 50, None)
    assert (overlap["stored"], overlap["duplicates"]) == (10, 10)
    assert series["series"]["train/loss"]["step"] == list(range(60))
    seqs = [e.data["seq"] for e in events if e.name == "metrics"]
    assert seqs == list(range(60))


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([{"seq": 1, "data": {"loss": 1.0}}, {"seq": 2, "data": {"loss": "high"}}], "events[1].data.loss"),
        ([{"seq": 1}, {"seq": 2, "kind": "gossip"}], "events[1].kind"),
        ([{"seq": 1, "step": -3}], "events[0].step"),
        ([{"seq": -1}], "events[0].seq"),
        ([{"seq": 1, "ts": "now"}], "events[0].ts"),
        ([{"seq": 1, "data": [1, 2]}], "events[0].data"),
        ([{"seq": 1}, "not an event"], "events[1]"),
        ([{"seq": 1}, {"kind": "status", "data": {"status": "sleeping"}}], "events[1].data.status"),
        ([{"seq": 1, "data": {"x" * 257: 1.0}}], "events[0].data"),  # a metric name over 256 characters
        ([{"seq": 1, "data": {f"m{i}": 1.0 for i in range(4097)}}], "events[0].data"),  # too many keys
        ([{"seq": 1, "kind": {}}], "events[0].kind"),  # found by the fuzzer: an unhashable kind was a 500
        ([{"seq": 1, "kind": ["metrics"]}], "events[0].kind"),
        ([{"kind": "status", "data": {"status": {"s": 1}}}], "events[0].data.status"),
        ([{"kind": "control", "data": {"action": [], "status": "applied"}}], "events[0].data.action"),
        ([{"kind": "control", "data": {"action": "pause", "status": {}}}], "events[0].data.status"),
        ("not a list", "events"),
    ],
)
def test_a_bad_event_refuses_the_whole_batch(client: TestClient, events: object, field: str) -> None:
    run_id = unique("bad")
    create_run(client, run_id)
    assert_error(client.post(f"/api/runs/{run_id}/events", json={"events": events}), 422, field)
    assert client.get(f"/api/runs/{run_id}").json()["metrics"] == {}
    assert [e.name for e in stored_events(client, run_id)] == ["status"]
    # the refused batch's seqs were not taken: the good version of it is stored in full
    assert post_events(client, run_id, [{"seq": 1, "step": 0, "data": {"loss": 1.0}}])["stored"] == 1


def test_seqs_may_arrive_out_of_order_and_each_is_stored_once(client: TestClient) -> None:
    run_id = f"ooo-{uuid.uuid4().hex[:8]}"
    create_run(client, run_id)
    later = [{"seq": s, "step": s, "data": {"loss": float(s)}} for s in (7, 5, 6)]
    earlier = [{"seq": s, "step": s, "data": {"loss": float(s)}} for s in (2, 1, 5)]
    assert post_events(client, run_id, later)["stored"] == 3
    answer = post_events(client, run_id, earlier)
    assert (answer["stored"], answer["duplicates"]) == (2, 1)
    series = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "loss"}).json()
    assert series["series"]["loss"]["step"] == [1, 2, 5, 6, 7]  # history is by step, whatever the order


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b""])
def test_ingest_refuses_invalid_json_with_a_400(client: TestClient, body: bytes) -> None:
    run_id = unique("json")
    create_run(client, run_id)
    response = client.post(
        f"/api/runs/{run_id}/events", content=body, headers={"content-type": "application/json"}
    )
    assert assert_error(response, 400)["code"] == "bad_json"
    assert [e.name for e in stored_events(client, run_id)] == ["status"]


@pytest.mark.parametrize("batch", [metrics_batch(0, 1), {"events": []}])
def test_ingest_to_an_unknown_run_is_a_404_and_creates_nothing(
    client: TestClient, batch: dict[str, Any]
) -> None:
    run_id = unique("ghost")
    assert_error(client.post(f"/api/runs/{run_id}/events", json=batch), 404)
    assert_error(client.get(f"/api/runs/{run_id}"), 404)


def test_a_body_over_the_limit_is_a_413_and_nothing_is_stored(small_body_app: TestClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the server must count as it reads
        yield b'{"events": ['
        for i in range(100):
            yield b'{"seq": %d, "data": {"loss": 1.0}},' % i
        yield b'{"seq": 100}]}'

    async def post_in_chunks() -> httpx.Response:
        # The TestClient reads a request body whole; httpx's ASGITransport hands the app one chunk at a
        # time, as a socket would. It runs no lifespan: it reaches the app the TestClient started, on the
        # TestClient's own event loop.
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url=APP_URL) as chunked:
            response = await chunked.post(
                "/api/runs/r/events", content=chunks(), headers={"content-type": "application/json"}
            )
            await response.aread()
            return response

    client = small_body_app
    create_run(client, "r")
    declared = client.post("/api/runs/r/events", json=metrics_batch(0, 100))
    assert assert_error(declared, 413)["code"] == "too_large"
    assert client.portal is not None
    streamed = client.portal.call(post_in_chunks)
    assert "content-length" not in streamed.request.headers
    assert assert_error(streamed, 413)["code"] == "too_large"
    assert post_events(client, "r", metrics_batch(0, 2))["stored"] == 2
    names = [e.name for e in stored_events(client, "r")]
    assert names == ["status", "metrics", "metrics"]


def test_nan_is_stored_as_null_and_reported_as_an_insight(client: TestClient) -> None:
    run_id = unique("nan")
    create_run(client, run_id)
    first = post_events(client, run_id, [{"seq": 0, "step": 5, "data": {"loss": "nan", "acc": 0.5}}])
    again = post_events(client, run_id, [{"seq": 1, "step": 6, "data": {"loss": "NaN", "g": "-inf"}}])
    current = client.get("/api/metrics/current", params={"run_id": run_id}).json()
    history = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "loss"}).json()
    events = stored_events(client, run_id)
    assert first["stored"] == 1 and again["stored"] == 1
    assert set(current["metrics"]) == {"acc"}  # a null is no latest value
    assert history["series"]["loss"]["total"] == 0
    metrics = [e.data["data"] for e in events if e.name == "metrics"]
    assert metrics == [{"loss": None, "acc": 0.5}, {"loss": None, "g": None}]
    insights = [e.data["data"] for e in events if e.name == "insight"]
    assert [i["kind"] for i in insights] == ["nan_inf", "nan_inf"]  # once per run and metric
    assert insights[0]["evidence"]["metrics"] == ["loss"] and insights[0]["step"] == 5
    assert insights[1]["evidence"]["metrics"] == ["g"] and insights[1]["step"] == 6


# -- metrics ----------------------------------------------------------------------------------------


def test_current_metrics_default_to_the_most_recent_active_run(app_client: TestClient) -> None:
    client = app_client
    assert assert_error(client.get("/api/metrics/current"), 404)["code"] == "not_found"
    create_run(client, "old")
    client.post("/api/runs/old/events", json=metrics_batch(0, 3))
    create_run(client, "new")
    client.post("/api/runs/new/events", json=metrics_batch(0, 7))
    current = client.get("/api/metrics/current").json()
    assert current["run_id"] == "new" and current["step"] == 6 and current["status"] == "created"
    assert current["metrics"]["train/loss"] == {
        "value": pytest.approx(1 / 7),
        "step": 6,
        "ts": pytest.approx(time.time(), abs=60),
    }
    explicit = client.get("/api/metrics/current", params={"run_id": "old"}).json()
    assert explicit["run_id"] == "old" and explicit["step"] == 2
    finish(client, "new")
    assert client.get("/api/metrics/current").json()["run_id"] == "old"


def test_current_metrics_of_an_unknown_run_is_a_404(client: TestClient) -> None:
    assert_error(client.get("/api/metrics/current", params={"run_id": unique("ghost")}), 404)


@pytest.fixture(scope="module")
def long_run(shared_app: TestClient) -> str:
    """5000 steps of a falling loss with one huge spike at step 1234, a rising acc, and a wave whose
    extremes lie mid-run."""
    run_id = unique("hist")
    client = shared_app
    create_run(client, run_id)
    events = [
        {
            "seq": i,
            "step": i,
            "data": {
                "loss": 1e6 if i == 1234 else 1.0 / (i + 1),
                "acc": i / 5000,
                "wave": math.sin(i / 300),
            },
        }
        for i in range(5000)
    ]
    assert post_events(client, run_id, events)["stored"] == 5000
    return run_id


@pytest.mark.parametrize("max_points", [2, 3, 7, 100, 999])
def test_history_downsamples_to_max_points_keeping_the_spike_and_the_latest(
    client: TestClient, long_run: str, max_points: int
) -> None:
    params = {"run_id": long_run, "keys": "loss,acc,wave", "max_points": max_points}
    body = client.get("/api/metrics/history", params=params).json()
    assert body["run_id"] == long_run and body["max_points"] == max_points
    for series in body["series"].values():
        assert series["total"] == 5000 and series["downsampled"] is True
        assert 2 <= len(series["step"]) <= max_points
        assert len(series["value"]) == len(series["ts"]) == len(series["step"])
        assert series["step"] == sorted(series["step"]) and series["step"][-1] == 4999
    if max_points >= 3:  # two points leave room only for the ends
        loss, wave = body["series"]["loss"], body["series"]["wave"]
        assert loss["value"][loss["step"].index(1234)] == 1e6
        waves = [math.sin(i / 300) for i in range(5000)]
        assert max(wave["value"]) == max(waves) and min(wave["value"]) == min(waves)


def test_history_filters_by_keys_and_step_range(client: TestClient, long_run: str) -> None:
    ranged = client.get(
        "/api/metrics/history",
        params={"run_id": long_run, "keys": "acc", "start_step": 10, "end_step": 19},
    ).json()
    everything = client.get("/api/metrics/history", params={"run_id": long_run, "max_points": 5000}).json()
    open_end = client.get("/api/metrics/history", params={"run_id": long_run, "start_step": 4990}).json()
    unknown = client.get("/api/metrics/history", params={"run_id": long_run, "keys": "nope"}).json()
    assert set(ranged["series"]) == {"acc"}
    acc = ranged["series"]["acc"]
    assert acc["step"] == list(range(10, 20)) and acc["total"] == 10 and acc["downsampled"] is False
    assert acc["value"] == pytest.approx([i / 5000 for i in range(10, 20)])
    assert set(everything["series"]) == {"loss", "acc", "wave"}
    assert everything["series"]["loss"]["step"] == list(range(5000))
    assert open_end["series"]["loss"]["step"] == list(range(4990, 5000))
    assert unknown["series"]["nope"] == {"step": [], "value": [], "ts": [], "total": 0, "downsampled": False}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"max_points": "1"}, "max_points"),
        ({"max_points": "100001"}, "max_points"),
        ({"max_points": "many"}, "max_points"),
        ({"start_step": "-1"}, "start_step"),
        ({"start_step": str(10**20)}, "start_step"),
        ({"end_step": str(2**63)}, "end_step"),
        ({"start_step": "9", "end_step": "3"}, "end_step"),
        ({"keys": ",".join(f"k{i}" for i in range(65))}, "keys"),
    ],
)
def test_history_refuses_bad_parameters_naming_the_field(
    client: TestClient, long_run: str, params: dict[str, str], field: str
) -> None:
    response = client.get("/api/metrics/history", params={"run_id": long_run, **params})
    assert_error(response, 422, field)


def test_history_of_an_unknown_run_is_a_404(client: TestClient) -> None:
    assert_error(client.get("/api/metrics/history", params={"run_id": unique("ghost")}), 404)


# -- control ----------------------------------------------------------------------------------------


def test_control_commands_get_a_command_id_and_are_streamed_as_requested(client: TestClient) -> None:
    run_id = unique("ctl")
    commands: list[tuple[str, float | None]] = [
        ("pause", None),
        ("resume", None),
        ("checkpoint", None),
        ("set_lr", 0.01),
        ("stop", None),
    ]
    create_run(client, run_id)
    ids = []
    for action, value in commands:
        body: dict[str, Any] = {"run_id": run_id, "action": action}
        if value is not None:
            body["value"] = value
        reply = client.post("/api/training/control", json=body)
        assert reply.status_code == 202, reply.text
        answer = reply.json()
        assert answer["status"] == "requested" and isinstance(answer["command_id"], int)
        assert (answer["run_id"], answer["action"], answer["value"]) == (run_id, action, value)
        ids.append(answer["command_id"])
    events = [e for e in stored_events(client, run_id) if e.name == "control"]
    assert [e.id for e in events] == ids
    data = [e.data["data"] for e in events]
    assert [d["action"] for d in data] == [a for a, _ in commands]
    assert all(d["status"] == "requested" and d["requested_by"].startswith("http:") for d in data)
    assert data[3]["value"] == 0.01 and "value" not in data[0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "explode"}, "action"),
        ({}, "action"),
        ({"action": "set_lr"}, "value"),
        ({"action": "set_lr", "value": -1}, "value"),
        ({"action": "set_lr", "value": 0}, "value"),
        ({"action": "set_lr", "value": "fast"}, "value"),
        ({"action": "pause", "value": 3}, "value"),
    ],
)
def test_a_bad_control_request_is_refused_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    run_id = unique("ctlbad")
    create_run(client, run_id)
    assert_error(client.post("/api/training/control", json={"run_id": run_id, **body}), 422, field)
    assert [e.name for e in stored_events(client, run_id)] == ["status"]


def test_control_of_an_unknown_run_is_a_404(client: TestClient) -> None:
    response = client.post("/api/training/control", json={"run_id": unique("ghost"), "action": "pause"})
    assert_error(response, 404)


def test_control_with_invalid_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/api/training/control", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert assert_error(response, 400)["code"] == "bad_json"


def test_control_of_a_finished_run_is_a_409(client: TestClient) -> None:
    run_id = unique("ctldone")
    create_run(client, run_id)
    finish(client, run_id)
    response = client.post("/api/training/control", json={"run_id": run_id, "action": "pause"})
    assert assert_error(response, 409)["code"] == "conflict"
    assert [e.name for e in stored_events(client, run_id)] == ["status", "status"]


# -- auth -------------------------------------------------------------------------------------------


def test_a_token_app_refuses_changes_without_the_token(
    token_app: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"Authorization": "Bearer s3cret"}
    client = token_app
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Trainpilot-Token": "wrong"}):
        refused = client.post("/api/runs", json={"id": "r", "project": "p"}, headers=headers)
        assert assert_error(refused, 401)["code"] == "unauthorized"
    assert_error(client.get("/api/runs/r", headers=good), 404)  # nothing was created
    assert client.post("/api/runs", json={"id": "r", "project": "p"}, headers=good).status_code == 201
    assert_error(client.post("/api/runs/r/events", json=metrics_batch(0, 1)), 401)
    assert_error(client.post("/api/training/control", json={"run_id": "r", "action": "pause"}), 401)
    assert client.post("/api/runs/r/events", json=metrics_batch(0, 1), headers=good).status_code == 200
    control = client.post(
        "/api/training/control",
        json={"run_id": "r", "action": "pause"},
        headers={"X-Trainpilot-Token": "s3cret"},
    )
    assert control.status_code == 202
    assert "s3cret" not in caplog.text


def test_reads_need_a_token_and_a_read_token_cannot_change_anything(
    token_app: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    write, read = {"Authorization": "Bearer s3cret"}, {"Authorization": "Bearer look"}
    client = token_app
    assert client.post("/api/runs", json={"id": "r", "project": "p"}, headers=write).status_code == 201
    assert client.get("/api/system/health").status_code == 200  # for load balancers: no data in it
    reads = [
        ("/api/system/info", {}),
        ("/api/runs", {}),
        ("/api/runs/r", {}),
        ("/api/runs/r/insights", {}),
        ("/api/runs/r/summary", {}),
        ("/api/metrics/current", {"run_id": "r"}),
        ("/api/metrics/history", {"run_id": "r"}),
        ("/metrics", {}),
    ]
    for path, params in reads:
        assert assert_error(client.get(path, params=params), 401)["code"] == "unauthorized", path
        assert client.get(path, params=params, headers=read).status_code == 200, path
        assert client.get(path, params=params, headers=write).status_code == 200, path
    for path, body in [
        ("/api/runs", {"id": "r2", "project": "p"}),
        ("/api/runs/r/events", metrics_batch(0, 1)),
        ("/api/training/control", {"run_id": "r", "action": "pause"}),
    ]:
        assert assert_error(client.post(path, json=body, headers=read), 403)["code"] == "forbidden", path
    assert client.get("/api/runs/r", headers=read).json()["last_step"] is None  # nothing changed
    assert "look" not in caplog.text


def test_event_source_reads_with_a_short_lived_signed_url_token(token_app: TestClient) -> None:
    client = token_app
    client.post("/api/runs", json={"id": "r", "project": "p"}, headers={"Authorization": "Bearer s3cret"})
    assert_error(client.post("/api/auth/stream-token"), 401)
    minted = client.post("/api/auth/stream-token", headers={"Authorization": "Bearer look"}).json()
    assert minted["scope"] == "read" and 0 < minted["expires_at"] - time.time() <= 300
    token = minted["access_token"]
    assert "look" not in token and "s3cret" not in token
    (connected,) = sse_events(client, {"after": "0", "access_token": token}, count=1)
    assert connected.name == "status" and connected.data["data"]["status"] == "created"
    expired = "read.1000000000." + token.rsplit(".", 1)[1]
    scope, expires, signature = token.split(".")
    forged = f"{scope}.{int(expires) + 3600}.{signature}"
    for bad in (expired, forged, "s3cret", token[:-2]):
        response = client.get("/api/stream/metrics", params={"access_token": bad})
        assert assert_error(response, 401)["code"] == "unauthorized", bad
    refused = client.get("/api/runs", params={"access_token": token})
    assert refused.status_code == 401  # URL tokens are for the streams only


def test_cors_is_off_by_default_and_allows_only_the_configured_origins(tmp_path: Path) -> None:
    origin = {"Origin": "http://dash.example"}
    with in_process(tmp_path / "a") as default:
        response = default.get("/api/runs", headers=origin)
        assert response.status_code == 403 and "access-control-allow-origin" not in response.headers
    with in_process(tmp_path / "b", cors_origins="http://dash.example") as configured:
        allowed = configured.get("/api/runs", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "http://dash.example"
        other = configured.get("/api/runs", headers={"Origin": "http://evil.example"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
        preflight = configured.options(
            "/api/training/control",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
        with configured.stream("GET", "/api/stream/metrics", headers=origin) as stream:
            assert stream.headers["access-control-allow-origin"] == "http://dash.example"


def test_info_and_metrics_report_receipt_to_durable_time_of_every_ingested_batch(
    app_client: TestClient,
) -> None:
    client = app_client
    create_run(client, "timed")
    for start in range(0, 40, 10):
        client.post("/api/runs/timed/events", json=metrics_batch(start, 10)).raise_for_status()
    with app_socket(client) as sock:
        sock.send(orjson.dumps({"op": "ingest", "run_id": "timed", **metrics_batch(40, 10)}).decode())
        assert orjson.loads(sock.recv(timeout=10))["op"] == "ingested"
    ingest = client.get("/api/system/info").json()["ingest"]
    exposition = client.get("/metrics").text
    assert ingest["batches"] == sum(ingest["counts"]) == 5
    assert len(ingest["counts"]) == len(ingest["bounds_ms"]) + 1
    assert ingest["p50_ms_at_most"] is not None and ingest["p50_ms_at_most"] <= ingest["p99_ms_at_most"]
    assert 'trainpilot_ingest_seconds_bucket{le="+Inf"} 5.0' in exposition
