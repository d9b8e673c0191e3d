"""The WebSocket: subscribe with a cursor, filters, ingest, control, ping, errors. On the app in this process,
but for the socket that the server itself closes mid-answer, which needs a real server's socket."""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import AppSocket, Client, LiveServer, app_socket, create_run, in_process, metrics_batch
from trainpilot.server.runner import ServerThread


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Socket:
    """A client that keeps pushed events apart from replies: events can arrive before a reply."""

    def __init__(self, ws: ClientConnection | AppSocket) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    def send(self, message: object) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def _next(self, deadline: float) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if message["op"] == "events":
            assert isinstance(message["events"], list) and message["events"], message
            self.events.extend(message["events"])
        return message

    def reply(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next message that is not events (events are kept in `self.events`)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(deadline)
            if message["op"] != "events":
                return message

    def ask(self, message: object) -> dict[str, Any]:
        self.send(message)
        return self.reply()

    def wait_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least `count` events, however many messages they came in."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            message = self._next(deadline)
            assert message["op"] == "events", message
        return list(self.events)

    def quiet(self) -> list[dict[str, Any]]:
        """The events that arrived before a ping's answer: what was published so far and matched."""
        assert self.ask({"op": "ping"})["op"] == "pong"
        return list(self.events)


@pytest.fixture
def client(shared_app: TestClient) -> TestClient:
    """The module's one app: each test adds runs of its own."""
    return shared_app


@pytest.fixture
def token_app(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[TestClient]:
    """An app with a write token, whose log (all of trainpilot's, to DEBUG) the test may read."""
    caplog.set_level(logging.DEBUG, logger="trainpilot")
    with in_process(tmp_path, token="s3cret") as app:
        yield app


def open_socket(server: LiveServer, query: str = "", **kwargs: Any) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{server.port}/api/ws{query}", open_timeout=5, **kwargs)


def ingest(client: Client, run_id: str, body: object) -> dict[str, Any]:
    response = client.post(f"/api/runs/{run_id}/events", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_strictly_increasing(ids: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(ids)), ids


def test_ping_answers_pong_with_the_ref_and_the_head(client: TestClient) -> None:
    run_id = unique("ping")
    with app_socket(client) as ws:
        sock = Socket(ws)
        first = sock.ask({"op": "ping", "ref": 7})
        assert first["op"] == "pong" and first["ref"] == 7 and first["head"] >= 0
        assert "ref" not in sock.ask({"op": "ping"})
        create_run(client, run_id)
        last_id = ingest(client, run_id, metrics_batch(0, 3))["last_id"]
        pong = sock.ask({"op": "ping", "ref": {"any": ["json"]}})
    assert pong["ref"] == {"any": ["json"]} and pong["head"] >= last_id


def test_subscribe_after_a_cursor_replays_then_streams_live_without_gap_or_duplicate(
    client: TestClient,
) -> None:
    run_id = unique("cursor")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        cursor = ingest(client, run_id, metrics_batch(0, 20))["last_id"]
        ingest(client, run_id, metrics_batch(20, 20))
        reply = sock.ask({"op": "subscribe", "after": cursor, "run_id": run_id, "kinds": ["metrics"]})
        assert reply == {"op": "subscribed", "after": cursor}
        sock.wait_events(20)
        for start in range(40, 100, 10):  # live, in several batches while the socket reads
            ingest(client, run_id, metrics_batch(start, 10))
        events = sock.wait_events(80)
    assert [e["step"] for e in events] == list(range(20, 100))
    ids = [e["id"] for e in events]
    assert ids[0] > cursor
    assert_strictly_increasing(ids)


def test_subscribe_without_a_cursor_starts_at_the_live_head(client: TestClient) -> None:
    run_id = unique("head")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        ingest(client, run_id, metrics_batch(0, 5))
        head = sock.ask({"op": "ping"})["head"]
        reply = sock.ask({"op": "subscribe", "run_id": run_id})
        assert reply["op"] == "subscribed" and reply["after"] >= head
        ingest(client, run_id, metrics_batch(5, 2))
        events = sock.wait_events(2)
    assert [e["step"] for e in events] == [5, 6]


def test_subscription_filters_runs_and_kinds_and_trims_metric_keys(client: TestClient) -> None:
    wanted, other = unique("wsf"), unique("wsf")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, wanted)
        create_run(client, other)
        sock.ask({"op": "subscribe", "run_id": wanted, "kinds": "metrics", "keys": ["train/acc"]})
        ingest(client, other, metrics_batch(0, 3))
        ingest(client, wanted, {"events": [{"kind": "log", "data": {"text": "not a metric"}}]})
        ingest(client, wanted, {"events": [{"step": 0, "data": {"val/loss": 0.3}}]})  # no wanted key
        ingest(client, wanted, metrics_batch(1, 3))
        events = sock.wait_events(3)
        assert sock.quiet() == events  # nothing else arrived
    assert {e["run_id"] for e in events} == {wanted} and {e["kind"] for e in events} == {"metrics"}
    assert [e["step"] for e in events] == [1, 2, 3]
    assert [e["data"] for e in events] == [{"train/acc": s / 1000} for s in (1, 2, 3)]


def test_a_keys_filter_with_a_star_matches_a_prefix(client: TestClient) -> None:
    run_id = unique("wsk")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        sock.ask({"op": "subscribe", "run_id": [run_id], "keys": "train/*,lr"})
        ingest(
            client, run_id, {"events": [{"step": 0, "data": {"train/a": 1, "train/b": 2, "lr": 3, "x": 4}}]}
        )
        (event,) = sock.wait_events(1)
    assert event["data"] == {"train/a": 1.0, "train/b": 2.0, "lr": 3.0}


def test_ingest_over_the_socket_is_stored_once(client: TestClient) -> None:
    run_id = unique("wsi")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        batch = {"op": "ingest", "run_id": run_id, "ref": "b1", **metrics_batch(0, 10)}
        first = sock.ask(batch)
        second = sock.ask({**batch, "ref": "b2"})
        history = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "train/loss"}).json()
    assert first["op"] == "ingested" and first["ref"] == "b1"
    assert (first["stored"], first["duplicates"]) == (10, 0) and isinstance(first["last_id"], int)
    assert (second["stored"], second["duplicates"], second["last_id"], second["ref"]) == (0, 10, None, "b2")
    assert history["series"]["train/loss"]["step"] == list(range(10))


def test_events_ingested_over_the_socket_reach_its_own_subscription(client: TestClient) -> None:
    run_id = unique("wsown")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        sock.ask({"op": "subscribe", "run_id": run_id, "kinds": ["metrics"]})
        answer = sock.ask({"op": "ingest", "run_id": run_id, **metrics_batch(0, 4)})
        events = sock.wait_events(4)
    assert [e["step"] for e in events] == [0, 1, 2, 3] and events[-1]["id"] == answer["last_id"]


def test_an_answer_due_after_a_resync_closed_the_socket_ends_it_quietly(tmp_path: Path) -> None:
    """The ingest that cuts its own socket's subscriber off (a batch larger than the ring) is answered
    only after the broker sent `resync` and closed the socket: a NaN makes the server store an insight
    first. The answer is dropped, not raised; the client resumes from the resync id with no gap.

    On a real server: there a send after the close raises, where the in-process client's socket would
    take it silently and prove nothing."""
    live = LiveServer(tmp_path / "d", ring_size="64").start()
    try:
        with live.client() as client, open_socket(live) as ws:
            create_run(client, "cut")
            sock = Socket(ws)
            assert sock.ask({"op": "subscribe", "run_id": "cut"})["op"] == "subscribed"
            batch = metrics_batch(0, 200)
            batch["events"][-1]["data"]["train/loss"] = "nan"  # type: ignore[index]
            sock.send({"op": "ingest", "run_id": "cut", "ref": 1, **batch})
            resync = sock.reply()
            assert resync["op"] == "resync", resync
            with pytest.raises(ConnectionClosed):
                sock.reply()
            assert ws.close_code == 4000
        with open_socket(live) as ws:
            sock = Socket(ws)
            sock.ask({"op": "subscribe", "run_id": "cut", "after": resync["last_id"]})
            events = sock.wait_events(201)
        assert [e["step"] for e in events if e["kind"] == "metrics"] == list(range(200))
        assert [e["data"]["kind"] for e in events if e["kind"] == "insight"] == ["nan_inf"]
        assert httpx.get(live.url + "/api/system/health").json()["status"] == "ok"
    finally:
        live.stop()
    log = live.log.read_text()
    assert "Traceback" not in log and "Exception" not in log, log


def test_control_over_the_socket_returns_the_command_id_of_the_streamed_event(
    client: TestClient,
) -> None:
    run_id = unique("wsc")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        sock.ask({"op": "subscribe", "run_id": run_id, "kinds": ["control"]})
        reply = sock.ask({"op": "control", "run_id": run_id, "action": "set_lr", "value": 0.5, "ref": 3})
        (event,) = sock.wait_events(1)
    assert reply["op"] == "control" and reply["status"] == "requested" and reply["ref"] == 3
    assert (reply["run_id"], reply["action"]) == (run_id, "set_lr")
    assert event["id"] == reply["command_id"] and event["kind"] == "control"
    assert event["data"]["action"] == "set_lr" and event["data"]["value"] == 0.5
    assert event["data"]["status"] == "requested" and event["data"]["requested_by"].startswith("ws:")


def test_control_of_a_finished_run_is_a_conflict_message(client: TestClient) -> None:
    run_id = unique("wsdone")
    with app_socket(client) as ws:
        create_run(client, run_id)
        ingest(client, run_id, {"events": [{"kind": "status", "data": {"status": "finished"}}]})
        reply = Socket(ws).ask({"op": "control", "run_id": run_id, "action": "pause"})
    assert reply["op"] == "error" and reply["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("message", "code", "field"),
    [
        ("{nope", "bad_json", None),
        ('"just a string"', "invalid_input", "message"),
        ([1, 2], "invalid_input", "message"),
        ({"ref": 1}, "invalid_input", "op"),
        ({"op": "dance"}, "invalid_input", "op"),
        ({"op": 5}, "invalid_input", "op"),
        ({"op": "subscribe", "kinds": ["gossip"]}, "invalid_input", "kinds"),
        ({"op": "subscribe", "after": -1}, "invalid_input", "after"),
        ({"op": "subscribe", "after": 1.5}, "invalid_input", "after"),
        ({"op": "subscribe", "run_id": 5}, "invalid_input", "run_id"),
        ({"op": "subscribe", "keys": [1]}, "invalid_input", "keys"),
        ({"op": "ingest", "events": []}, "invalid_input", "run_id"),
        ({"op": "ingest", "run_id": "a/b", "events": []}, "invalid_input", "run_id"),
        (
            {"op": "ingest", "run_id": "a/b", "ref": 4, "events": [{"data": {"x": 1}}]},
            "invalid_input",
            "run_id",
        ),
        (
            {"op": "ingest", "run_id": "x", "events": [{"data": {"loss": "high"}}]},
            "invalid_input",
            "events[0].data.loss",
        ),
        ({"op": "ingest", "run_id": "x", "events": "many"}, "invalid_input", "events"),
        ({"op": "ingest", "run_id": "ghost-ws", "events": []}, "not_found", None),
        ({"op": "control", "run_id": "ghost-ws", "action": "stop"}, "not_found", None),
        ({"op": "control", "action": "stop"}, "invalid_input", "run_id"),
        ({"op": "control", "run_id": "x", "action": "explode"}, "invalid_input", "action"),
        ({"op": "control", "run_id": "x", "action": "set_lr"}, "invalid_input", "value"),
        ({"op": "control", "run_id": "x", "action": "set_lr", "value": -0.1}, "invalid_input", "value"),
    ],
)
def test_a_bad_message_gets_an_error_message_and_the_socket_stays_open(
    client: TestClient, message: object, code: str, field: str | None
) -> None:
    with app_socket(client) as ws:
        sock = Socket(ws)
        reply = sock.ask(message)
        assert reply["op"] == "error" and reply["error"]["code"] == code, reply
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        assert reply["error"].get("field") == field
        if isinstance(message, dict) and "ref" in message:
            assert reply["ref"] == message["ref"]
        pong = sock.ask({"op": "ping", "ref": "after"})
    assert pong["op"] == "pong" and pong["ref"] == "after"


def test_an_error_echoes_the_ref(client: TestClient) -> None:
    with app_socket(client) as ws:
        reply = Socket(ws).ask({"op": "dance", "ref": "r-9"})
    assert reply["op"] == "error" and reply["ref"] == "r-9"


def test_resubscribe_replaces_the_old_subscription(client: TestClient) -> None:
    first, second = unique("wsr"), unique("wsr")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, first)
        create_run(client, second)
        assert sock.ask({"op": "subscribe", "run_id": first})["op"] == "subscribed"
        assert sock.ask({"op": "subscribe", "run_id": second, "kinds": ["metrics"]})["op"] == "subscribed"
        ingest(client, first, metrics_batch(0, 2))
        ingest(client, second, metrics_batch(0, 2))
        events = sock.wait_events(2)
        assert sock.quiet() == events  # nothing of the first run came, before or after
    assert {e["run_id"] for e in events} == {second} and [e["step"] for e in events] == [0, 1]


def test_unsubscribe_stops_the_events(client: TestClient) -> None:
    run_id = unique("wsu")
    with app_socket(client) as ws:
        sock = Socket(ws)
        create_run(client, run_id)
        sock.ask({"op": "subscribe", "run_id": run_id, "kinds": ["metrics"]})
        ingest(client, run_id, metrics_batch(0, 2))
        assert len(sock.wait_events(2)) == 2
        assert sock.ask({"op": "unsubscribe", "ref": 1}) == {"op": "unsubscribed", "ref": 1}
        ingest(client, run_id, metrics_batch(2, 2))
        assert len(sock.quiet()) == 2
        assert sock.ask({"op": "unsubscribe"}) == {"op": "unsubscribed"}  # twice is fine


def test_write_ops_need_the_token_on_a_token_server(
    token_app: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = token_app
    created = client.post(
        "/api/runs", json={"id": "r", "project": "p"}, headers={"Authorization": "Bearer s3cret"}
    )
    assert created.status_code == 201
    for query in ("", "?access_token=wrong", "?token=s3cret"):  # a raw token in a URL is not taken
        with app_socket(client, query) as ws:
            sock = Socket(ws)
            for op in (
                {"op": "ingest", "run_id": "r", **metrics_batch(0, 1)},
                {"op": "control", "run_id": "r", "action": "pause"},
                {"op": "subscribe", "run_id": "r"},
            ):
                refused = sock.ask(op)
                assert refused["op"] == "error" and refused["error"]["code"] == "unauthorized"
            assert sock.ask({"op": "ping"})["op"] == "pong"
    headers = {"Authorization": "Bearer s3cret"}
    assert (
        client.get("/api/runs/r", headers=headers).json()["last_event_id"] == created.json()["last_event_id"]
    )
    url_token = client.post("/api/auth/stream-token", headers=headers).json()["access_token"]
    with app_socket(client, f"?access_token={url_token}") as ws:
        sock = Socket(ws)
        assert sock.ask({"op": "subscribe", "run_id": "r"})["op"] == "subscribed"  # a URL token reads
        refused = sock.ask({"op": "control", "run_id": "r", "action": "pause"})
        assert refused["op"] == "error" and refused["error"]["code"] == "forbidden"  # ... and only reads
    with app_socket(client, headers=headers) as ws:
        assert Socket(ws).ask({"op": "ingest", "run_id": "r", **metrics_batch(0, 1)})["stored"] == 1
    with app_socket(client, headers={"Authorization": "Bearer s3cret"}) as ws:
        assert Socket(ws).ask({"op": "control", "run_id": "r", "action": "pause"})["op"] == "control"
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize("size", [10, 1_000, 70_000], ids=["short-frame", "16-bit-length", "64-bit-length"])
def test_live_events_written_straight_to_the_socket_arrive_whole_at_every_frame_size(
    threaded_server: ServerThread, size: int
) -> None:
    """On uvicorn the broker frames a message once and writes it to each socket itself (no ASGI send):
    every length encoding of RFC 6455 must reach a standard client intact, to two subscribers."""
    run_id = unique("frames")
    text = "é" * (size // 2)  # two bytes each in UTF-8: the frame's length counts bytes, not characters
    url = f"ws://127.0.0.1:{threaded_server.settings.port}/api/ws"
    direct = threaded_server.hub.broker.stats["direct"]
    with (
        httpx.Client(base_url=threaded_server.url, timeout=10) as client,
        connect(url, open_timeout=5) as one,
        connect(url, open_timeout=5) as two,
    ):
        create_run(client, run_id)
        socks = [Socket(one), Socket(two)]
        for sock in socks:
            assert sock.ask({"op": "subscribe", "run_id": run_id, "kinds": ["log"]})["op"] == "subscribed"
        event = {"seq": 1, "kind": "log", "step": 0, "data": {"text": text}}
        ingest(client, run_id, {"events": [event]})
        for sock in socks:
            assert [e["data"]["text"] for e in sock.wait_events(1)] == [text]
    assert threaded_server.hub.broker.stats["direct"] - direct == 2  # both past the ASGI send
