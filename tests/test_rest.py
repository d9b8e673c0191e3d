"""Every REST endpoint against a real server: the happy path and the bad-input path."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, create_run, metrics_batch, sse_events


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return error


def test_health_info_prometheus_and_docs_answer(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        health = client.get("/api/system/health").json()
        assert health["status"] == "ok" and health["store"]["backend"] == "sqlite"
        info = client.get("/api/system/info").json()
        assert info["version"] and info["cpu"]["count"] >= 1 and info["memory"]["process_rss_bytes"] > 0
        assert set(info["connections"]) == {"sse", "ws"} and info["backends"]["store"] == "sqlite"
        prometheus = client.get("/metrics")
        assert prometheus.status_code == 200 and "trainpilot_events_ingested_total" in prometheus.text
        assert "trainpilot_subscribers" in prometheus.text
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
        assert "/api/stream/metrics" in schema["paths"] and "/api/training/control" in schema["paths"]


def test_create_run_is_idempotent_on_id(shared_server: LiveServer) -> None:
    run_id = unique("create")
    with shared_server.client() as client:
        first = client.post("/api/runs", json={"id": run_id, "project": "p", "config": {"lr": 0.1}})
        assert first.status_code == 201 and first.json()["status"] == "created"
        again = client.post("/api/runs", json={"id": run_id, "project": "other"})
        assert again.status_code == 200 and again.json()["project"] == "p"
        generated = client.post("/api/runs", json={"project": "p"})
        assert generated.status_code == 201 and generated.json()["id"].startswith("r-")
        listed = client.get("/api/runs", params={"project": "p"}).json()["runs"]
        assert run_id in {r["id"] for r in listed}
        got = client.get(f"/api/runs/{run_id}").json()
        assert got["config"] == {"lr": 0.1} and got["metrics"] == {}


def test_bad_run_requests_get_json_errors_naming_the_field(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        assert_error(client.post("/api/runs", json={"project": ""}), 422, "project")
        assert_error(client.post("/api/runs", json={"project": "p", "config": "nope"}), 422, "config")
        assert_error(client.post("/api/runs", json={"id": "a/b", "project": "p"}), 422, "id")
        assert_error(client.get("/api/runs", params={"limit": 0}), 422, "limit")
        assert_error(client.get("/api/runs/no-such-run"), 404)
        assert_error(client.delete("/api/runs"), 405)


def test_same_batch_twice_is_stored_once(shared_server: LiveServer) -> None:
    run_id = unique("dup")
    with shared_server.client() as client:
        create_run(client, run_id)
        first = client.post(f"/api/runs/{run_id}/events", json=metrics_batch(0, 50)).json()
        second = client.post(f"/api/runs/{run_id}/events", json=metrics_batch(0, 50)).json()
        assert (first["stored"], first["duplicates"]) == (50, 0)
        assert (second["stored"], second["duplicates"]) == (0, 50)
        series = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "train/loss"}).json()
        assert series["series"]["train/loss"]["step"] == list(range(50))
    replay = sse_events(shared_server.url, {"after": "0", "run_id": run_id, "kinds": "metrics"}, count=50)
    assert len({e.data["seq"] for e in replay}) == 50  # type: ignore[index]


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([{"seq": 1, "data": {"loss": 1.0}}, {"seq": 2, "data": {"loss": "high"}}], "events[1].data.loss"),
        ([{"seq": 1, "kind": "gossip"}], "events[0].kind"),
        ([{"seq": 1, "step": -3}], "events[0].step"),
        ("not a list", "events"),
    ],
)
def test_a_bad_event_refuses_the_whole_batch(shared_server: LiveServer, events: object, field: str) -> None:
    run_id = unique("bad")
    with shared_server.client() as client:
        create_run(client, run_id)
        assert_error(client.post(f"/api/runs/{run_id}/events", json={"events": events}), 422, field)
        assert client.get(f"/api/runs/{run_id}").json()["metrics"] == {}
        replay = sse_events(shared_server.url, {"after": "0", "run_id": run_id}, count=1)
        assert replay[0].name == "status"  # only the run's own "created" event is stored
        follow = client.post(f"/api/runs/{run_id}/events", json={"events": [{"seq": 9, "data": {"x": 1}}]})
        assert follow.json()["stored"] == 1


def test_ingest_refuses_bad_json_unknown_runs_and_oversized_bodies(
    shared_server: LiveServer, tmp_path: Path
) -> None:
    with shared_server.client() as client:
        run_id = unique("ingest")
        create_run(client, run_id)
        response = client.post(
            f"/api/runs/{run_id}/events", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_error(response, 400)
        assert_error(
            client.post(
                f"/api/runs/{run_id}/events",
                content=b"\xff\xfe",
                headers={"content-type": "application/json"},
            ),
            400,
        )
        assert_error(client.post("/api/runs/ghost/events", json=metrics_batch(0, 1)), 404)
        assert_error(client.post("/api/runs/ghost/events", json={"events": []}), 404)
    small = LiveServer(tmp_path / "small", max_body_bytes="1000").start()
    try:
        with small.client() as client:
            create_run(client, "r")
            assert_error(client.post("/api/runs/r/events", json=metrics_batch(0, 100)), 413)
            assert client.post("/api/runs/r/events", json=metrics_batch(0, 2)).status_code == 200
    finally:
        small.stop()


def test_nan_is_stored_as_null_and_reported_as_an_insight(shared_server: LiveServer) -> None:
    run_id = unique("nan")
    with shared_server.client() as client:
        create_run(client, run_id)
        batch = {"events": [{"seq": 0, "step": 5, "data": {"loss": "nan", "acc": 0.5}}]}
        assert client.post(f"/api/runs/{run_id}/events", json=batch).json()["stored"] == 1
        current = client.get("/api/metrics/current", params={"run_id": run_id}).json()
        assert set(current["metrics"]) == {"acc"}
    events = sse_events(
        shared_server.url, {"after": "0", "run_id": run_id, "kinds": "metrics,insight"}, count=2
    )
    assert events[0].data["data"] == {"loss": None, "acc": 0.5}  # type: ignore[index]
    insight = events[1].data["data"]  # type: ignore[index]
    assert (
        insight["kind"] == "nan_inf" and insight["evidence"]["metrics"] == ["loss"] and insight["step"] == 5
    )


def test_current_metrics_default_to_the_most_recent_active_run(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "d").start()
    try:
        with live.client() as client:
            assert_error(client.get("/api/metrics/current"), 404)
            create_run(client, "old")
            client.post("/api/runs/old/events", json=metrics_batch(0, 3))
            create_run(client, "new")
            client.post("/api/runs/new/events", json=metrics_batch(0, 7))
            current = client.get("/api/metrics/current").json()
            assert current["run_id"] == "new" and current["step"] == 6
            assert current["metrics"]["train/loss"]["step"] == 6
            assert client.get("/api/metrics/current", params={"run_id": "old"}).json()["step"] == 2
            client.post(
                "/api/runs/new/events", json={"events": [{"kind": "status", "data": {"status": "finished"}}]}
            )
            assert client.get("/api/metrics/current").json()["run_id"] == "old"
            assert_error(client.get("/api/metrics/current", params={"run_id": "ghost"}), 404)
    finally:
        live.stop()


def test_history_downsamples_to_max_points_keeping_the_spike_and_the_latest(
    shared_server: LiveServer,
) -> None:
    run_id = unique("hist")
    with shared_server.client() as client:
        create_run(client, run_id)
        events = [
            {"seq": i, "step": i, "data": {"loss": 100.0 if i == 1234 else 1.0 / (i + 1), "acc": 0.5}}
            for i in range(5000)
        ]
        client.post(f"/api/runs/{run_id}/events", json={"events": events})
        body = client.get(
            "/api/metrics/history", params={"run_id": run_id, "keys": "loss", "max_points": 100}
        ).json()
        loss = body["series"]["loss"]
        assert set(body["series"]) == {"loss"} and loss["total"] == 5000 and loss["downsampled"]
        assert len(loss["step"]) <= 100 and 1234 in loss["step"] and loss["step"][-1] == 4999
        ranged = client.get(
            "/api/metrics/history",
            params={"run_id": run_id, "keys": "loss,acc", "start_step": 10, "end_step": 19},
        ).json()
        assert ranged["series"]["acc"]["step"] == list(range(10, 20))
        everything = client.get("/api/metrics/history", params={"run_id": run_id, "max_points": 10}).json()
        assert set(everything["series"]) == {"loss", "acc"}


def test_history_bad_parameters_name_the_field(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        run_id = unique("histbad")
        create_run(client, run_id)
        params = {"run_id": run_id}
        assert_error(
            client.get("/api/metrics/history", params={**params, "max_points": 1}), 422, "max_points"
        )
        assert_error(
            client.get("/api/metrics/history", params={**params, "start_step": -1}), 422, "start_step"
        )
        assert_error(
            client.get("/api/metrics/history", params={**params, "start_step": 9, "end_step": 3}),
            422,
            "end_step",
        )
        assert_error(client.get("/api/metrics/history", params={**params, "max_points": "many"}), 422)
        assert_error(client.get("/api/metrics/history", params={"run_id": "ghost"}), 404)


def test_control_commands_are_stored_and_streamed_with_their_id(shared_server: LiveServer) -> None:
    run_id = unique("ctl")
    with shared_server.client() as client:
        create_run(client, run_id)
        ids = []
        for action, value in (
            ("pause", None),
            ("resume", None),
            ("checkpoint", None),
            ("set_lr", 0.01),
            ("stop", None),
        ):
            reply = client.post(
                "/api/training/control", json={"run_id": run_id, "action": action, "value": value}
            )
            assert reply.status_code == 202 and reply.json()["status"] == "requested"
            ids.append(reply.json()["command_id"])
    events = sse_events(shared_server.url, {"after": "0", "run_id": run_id, "kinds": "control"}, count=5)
    assert [e.id for e in events] == ids
    assert [e.data["data"]["action"] for e in events] == ["pause", "resume", "checkpoint", "set_lr", "stop"]  # type: ignore[index]
    assert events[3].data["data"]["value"] == 0.01  # type: ignore[index]


def test_bad_control_requests_are_refused(shared_server: LiveServer) -> None:
    run_id = unique("ctlbad")
    with shared_server.client() as client:
        create_run(client, run_id)
        url = "/api/training/control"
        assert_error(client.post(url, json={"run_id": run_id, "action": "explode"}), 422, "action")
        assert_error(client.post(url, json={"run_id": run_id, "action": "set_lr"}), 422, "value")
        assert_error(client.post(url, json={"run_id": run_id, "action": "set_lr", "value": -1}), 422, "value")
        assert_error(client.post(url, json={"run_id": run_id, "action": "pause", "value": 3}), 422, "value")
        assert_error(client.post(url, json={"run_id": "ghost", "action": "pause"}), 404)
        client.post(
            f"/api/runs/{run_id}/events",
            json={"events": [{"kind": "status", "data": {"status": "finished"}}]},
        )
        assert_error(client.post(url, json={"run_id": run_id, "action": "pause"}), 409)


def test_a_token_server_refuses_changes_without_it_and_keeps_reads_open(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "d", token="s3cret").start()
    try:
        with live.client() as client:
            assert_error(client.post("/api/runs", json={"id": "r", "project": "p"}), 401)
            assert_error(
                client.post(
                    "/api/runs", json={"id": "r", "project": "p"}, headers={"Authorization": "Bearer wrong"}
                ),
                401,
            )
            ok = client.post(
                "/api/runs", json={"id": "r", "project": "p"}, headers={"Authorization": "Bearer s3cret"}
            )
            assert ok.status_code == 201
            assert_error(client.post("/api/runs/r/events", json=metrics_batch(0, 1)), 401)
            assert_error(client.post("/api/training/control", json={"run_id": "r", "action": "pause"}), 401)
            assert (
                client.post(
                    "/api/training/control",
                    json={"run_id": "r", "action": "pause"},
                    headers={"X-Trainpilot-Token": "s3cret"},
                ).status_code
                == 202
            )
            assert client.get("/api/runs").status_code == 200
        assert "s3cret" not in live.log.read_text()
    finally:
        live.stop()
