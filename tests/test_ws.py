"""The WebSocket against a real server: subscribe with a cursor, ingest, control, ping, errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import LiveServer, create_run, metrics_batch


def ws_url(server: LiveServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/api/ws{query}"


def ask(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send a message and return the next reply that is not an events message."""
    ws.send(json.dumps(message))
    while True:
        reply: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if reply["op"] != "events":
            return reply


def receive_events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        message = json.loads(ws.recv(timeout=10))
        assert message["op"] == "events", message
        events.extend(message["events"])
    return events


def test_ping_answers_pong_and_echoes_ref(shared_server: LiveServer) -> None:
    with connect(ws_url(shared_server)) as ws:
        reply = ask(ws, {"op": "ping", "ref": 7})
        assert reply["op"] == "pong" and reply["ref"] == 7 and reply["head"] >= 0


def test_subscribe_with_a_cursor_replays_then_streams_live_without_gaps(shared_server: LiveServer) -> None:
    run_id = f"ws-{uuid.uuid4().hex[:6]}"
    with shared_server.client() as client, connect(ws_url(shared_server)) as ws:
        create_run(client, run_id)
        client.post(f"/api/runs/{run_id}/events", json=metrics_batch(0, 30))
        reply = ask(ws, {"op": "subscribe", "after": 0, "run_id": run_id, "kinds": ["metrics"]})
        assert reply == {"op": "subscribed", "after": 0}
        replayed = receive_events(ws, 30)
        client.post(f"/api/runs/{run_id}/events", json=metrics_batch(30, 30))
        live = receive_events(ws, 30)
    events = replayed + live
    assert [e["step"] for e in events] == list(range(60))
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 60


def test_filters_pick_runs_kinds_and_trim_metric_keys(shared_server: LiveServer) -> None:
    a, b = (f"wsf-{uuid.uuid4().hex[:6]}" for _ in range(2))
    with shared_server.client() as client, connect(ws_url(shared_server)) as ws:
        create_run(client, a)
        create_run(client, b)
        ask(ws, {"op": "subscribe", "run_id": a, "kinds": "metrics", "keys": ["train/acc"]})
        client.post(f"/api/runs/{b}/events", json=metrics_batch(0, 3))
        client.post(f"/api/runs/{a}/events", json={"events": [{"kind": "log", "data": {"text": "skip me"}}]})
        client.post(f"/api/runs/{a}/events", json=metrics_batch(0, 3))
        events = receive_events(ws, 3)
    assert {e["run_id"] for e in events} == {a}
    assert all(set(e["data"]) == {"train/acc"} for e in events)


def test_ingest_over_the_socket_is_idempotent(shared_server: LiveServer) -> None:
    run_id = f"wsi-{uuid.uuid4().hex[:6]}"
    with shared_server.client() as client, connect(ws_url(shared_server)) as ws:
        create_run(client, run_id)
        batch = {"op": "ingest", "run_id": run_id, "ref": "b1", **metrics_batch(0, 10)}
        first = ask(ws, batch)
        assert first["op"] == "ingested" and first["stored"] == 10 and first["ref"] == "b1"
        second = ask(ws, batch)
        assert second["stored"] == 0 and second["duplicates"] == 10
        total = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "train/loss"}).json()
        assert total["series"]["train/loss"]["total"] == 10


def test_control_over_the_socket_returns_the_command_id(shared_server: LiveServer) -> None:
    run_id = f"wsc-{uuid.uuid4().hex[:6]}"
    with shared_server.client() as client, connect(ws_url(shared_server)) as ws:
        create_run(client, run_id)
        ask(ws, {"op": "subscribe", "run_id": run_id, "kinds": ["control"]})
        ws.send(json.dumps({"op": "control", "run_id": run_id, "action": "set_lr", "value": 0.5}))
        messages = [json.loads(ws.recv(timeout=10)) for _ in range(2)]  # the reply and the event, any order
        (reply,) = [m for m in messages if m["op"] == "control"]
        (events,) = [m["events"] for m in messages if m["op"] == "events"]
        assert reply["status"] == "requested"
        assert events[0]["id"] == reply["command_id"] and events[0]["data"]["action"] == "set_lr"


def test_errors_are_messages_and_the_socket_stays_open(shared_server: LiveServer) -> None:
    with connect(ws_url(shared_server)) as ws:
        ws.send("{nope")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "bad_json"
        assert ask(ws, {"op": "dance"})["error"]["field"] == "op"
        assert ask(ws, [1, 2])["error"]["field"] == "message"  # type: ignore[arg-type]
        assert ask(ws, {"op": "subscribe", "kinds": ["gossip"]})["error"]["field"] == "kinds"
        assert ask(ws, {"op": "subscribe", "after": -1})["error"]["field"] == "after"
        assert ask(ws, {"op": "ingest", "run_id": "ghost", "events": []})["error"]["code"] == "not_found"
        assert ask(ws, {"op": "ingest", "events": []})["error"]["field"] == "run_id"
        bad_event = ask(ws, {"op": "ingest", "run_id": "x", "events": [{"data": {"loss": "high"}}]})
        assert bad_event["error"]["field"] == "events[0].data.loss"
        assert ask(ws, {"op": "control", "run_id": "ghost", "action": "stop"})["error"]["code"] == "not_found"
        assert ask(ws, {"op": "ping"})["op"] == "pong"


def test_resubscribe_replaces_the_subscription(shared_server: LiveServer) -> None:
    a, b = (f"wsr-{uuid.uuid4().hex[:6]}" for _ in range(2))
    with shared_server.client() as client, connect(ws_url(shared_server)) as ws:
        create_run(client, a)
        create_run(client, b)
        ask(ws, {"op": "subscribe", "run_id": a})
        ask(ws, {"op": "subscribe", "run_id": b, "kinds": ["metrics"]})
        client.post(f"/api/runs/{a}/events", json=metrics_batch(0, 2))
        client.post(f"/api/runs/{b}/events", json=metrics_batch(0, 2))
        events = receive_events(ws, 2)
        assert {e["run_id"] for e in events} == {b}
        assert ask(ws, {"op": "unsubscribe"})["op"] == "unsubscribed"
        client.post(f"/api/runs/{b}/events", json=metrics_batch(2, 2))
        assert ask(ws, {"op": "ping"})["op"] == "pong"  # no events arrived in between


def test_write_ops_need_the_token_on_a_token_server(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "d", token="s3cret").start()
    try:
        with live.client() as client:
            client.post(
                "/api/runs", json={"id": "r", "project": "p"}, headers={"Authorization": "Bearer s3cret"}
            )
        with connect(ws_url(live)) as ws:
            reply = ask(ws, {"op": "ingest", "run_id": "r", **metrics_batch(0, 1)})
            assert reply["error"]["code"] == "unauthorized"
            assert (
                ask(ws, {"op": "control", "run_id": "r", "action": "pause"})["error"]["code"]
                == "unauthorized"
            )
            assert ask(ws, {"op": "subscribe", "run_id": "r"})["op"] == "subscribed"  # reads stay open
        with connect(ws_url(live, "?token=s3cret")) as ws:
            assert ask(ws, {"op": "ingest", "run_id": "r", **metrics_batch(0, 1)})["stored"] == 1
        with connect(ws_url(live), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert ask(ws, {"op": "control", "run_id": "r", "action": "pause"})["op"] == "control"
    finally:
        live.stop()
