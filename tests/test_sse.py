"""The SSE stream against a real server: delivery, resume, filters, heartbeats, slow subscribers."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    LiveServer,
    collect_in_background,
    create_run,
    metrics_batch,
    sse_events,
    wait_for_subscribers,
    wait_until,
)
from trainpilot.client.sse import parse
from trainpilot.server.params import parse_filter
from trainpilot.server.runner import ServerThread


def test_live_events_are_named_by_kind_with_the_event_id(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "sse-live")
        thread, received = collect_in_background(shared_server.url, {"run_id": "sse-live"}, count=3)
        wait_for_subscribers(client, 1)
        client.post("/api/runs/sse-live/events", json=metrics_batch(0, 2))
        client.post("/api/runs/sse-live/events", json={"events": [{"kind": "log", "data": {"text": "hi"}}]})
        thread.join(10)
    assert [e.name for e in received] == ["metrics", "metrics", "log"]
    assert all(isinstance(e.data, dict) and e.id == e.data["id"] for e in received)
    assert [e.data["step"] for e in received[:2]] == [0, 1]  # type: ignore[index]


def test_resume_after_last_event_id_has_no_gap_and_no_duplicate(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "sse-resume")
        client.post("/api/runs/sse-resume/events", json=metrics_batch(0, 100))
        params = {"run_id": "sse-resume", "kinds": "metrics"}
        first = sse_events(shared_server.url, {**params, "after": "0"}, count=40)
        client.post("/api/runs/sse-resume/events", json=metrics_batch(100, 100))
        # The header wins over ?after= (a browser reconnects with the header and the original URL).
        rest = sse_events(
            shared_server.url,
            {**params, "after": "0"},
            headers={"Last-Event-ID": str(first[-1].id)},
            count=160,
        )
    steps = [e.data["step"] for e in first + rest]  # type: ignore[index]
    assert steps == list(range(200))
    ids = [e.id for e in first + rest]
    assert ids == sorted(ids) and len(set(ids)) == 200


def test_two_subscribers_with_different_filters_each_get_their_own(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        create_run(client, "sse-f1")
        create_run(client, "sse-f2")
        t1, only_run1 = collect_in_background(shared_server.url, {"run_id": "sse-f1"}, count=5)
        t2, only_loss = collect_in_background(
            shared_server.url, {"kinds": "metrics", "keys": "train/loss", "run_id": "sse-f1,sse-f2"}, count=10
        )
        wait_for_subscribers(client, 2)
        client.post("/api/runs/sse-f2/events", json=metrics_batch(0, 5))
        client.post("/api/runs/sse-f1/events", json=metrics_batch(0, 5))
        t1.join(10)
        t2.join(10)
    assert {e.data["run_id"] for e in only_run1} == {"sse-f1"} and len(only_run1) == 5  # type: ignore[index]
    assert len(only_loss) == 10
    assert all(set(e.data["data"]) == {"train/loss"} for e in only_loss)  # type: ignore[index]


def test_bad_parameters_get_a_json_400_naming_the_field(shared_server: LiveServer) -> None:
    for params, field in (({"kinds": "gossip"}, "kinds"), ({"after": "abc"}, "after")):
        response = httpx.get(shared_server.url + "/api/stream/metrics", params=params)
        assert response.status_code == 400
        assert response.json()["error"]["field"] == field
    response = httpx.get(shared_server.url + "/api/stream/metrics", headers={"Last-Event-ID": "x"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "Last-Event-ID"
    assert httpx.post(shared_server.url + "/api/stream/metrics").status_code == 405


def test_idle_streams_get_heartbeats(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "d", heartbeat_s="0.2").start()
    try:
        with httpx.stream("GET", live.url + "/api/stream/metrics", timeout=5) as response:
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                if line == ": keepalive":
                    break
        assert ": keepalive" in lines
    finally:
        live.stop()


def test_a_stalled_subscriber_is_cut_off_with_resync_while_a_healthy_one_gets_everything(
    tmp_path: Path,
) -> None:
    live = LiveServer(tmp_path / "d", ring_size="64").start()
    try:
        with live.client() as client:
            create_run(client, "slow")
            stalled = socket.socket()
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", live.port))
            stalled.sendall(b"GET /api/stream/metrics?run_id=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            stalled.recv(256)  # the response head; then it stops reading
            total = 600
            healthy_thread, healthy = collect_in_background(live.url, {"run_id": "slow"}, count=total)
            wait_for_subscribers(client, 2)
            wide = {f"layer{k:03d}/grad_norm/some/long/name": float(k) for k in range(150)}
            for start in range(0, total, 20):
                batch = {"events": [{"seq": start + i, "step": start + i, "data": wide} for i in range(20)]}
                assert client.post("/api/runs/slow/events", json=batch).status_code == 200
            healthy_thread.join(30)
            assert [e.data["step"] for e in healthy] == list(range(total))  # type: ignore[index]

            stalled.settimeout(10)
            received = b""
            while chunk := stalled.recv(1 << 16):
                received += chunk
                if b"event: resync" in received and received.endswith(b"0\r\n\r\n"):
                    break
            stalled.close()
            assert b"event: resync" in received
            assert info_counter(client, "trainpilot_broker_resyncs_total") >= 1
    finally:
        live.stop()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_subscriber_that_stops_reading_during_replay_is_dropped_after_the_stall_timeout(
    tmp_path: Path, request: pytest.FixtureRequest, broker: str
) -> None:
    """Catching up from the store from an old cursor, before it reaches the ring, as a live one is."""
    url = "memory://" if broker == "memory" else request.getfixturevalue("redis").url
    live = LiveServer(tmp_path / "d", ring_size="64", stall_timeout_s="1", broker=url).start()
    try:
        with live.client() as client:
            create_run(client, "replay-stall")
            wide = {f"layer{k:03d}/grad_norm/some/long/name": float(k) for k in range(150)}
            for start in range(0, 600, 20):
                batch = {"events": [{"seq": start + i, "step": start + i, "data": wide} for i in range(20)]}
                assert client.post("/api/runs/replay-stall/events", json=batch).status_code == 200
            with socket.socket() as stalled:
                stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stalled.connect(("127.0.0.1", live.port))
                path = b"/api/stream/metrics?run_id=replay-stall&after=0"
                stalled.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                stalled.recv(256)  # the response head; then it stops reading, in the replay's first page
                wait_until(
                    lambda: info_counter(client, "trainpilot_broker_stalled_total") >= 1,
                    timeout=20,
                    what="the replaying subscriber to be dropped as stalled",
                )
            params = {"run_id": "replay-stall", "after": "0", "kinds": "metrics"}
            healthy = sse_events(live.url, params, count=600, timeout=20)
        assert [e.data["step"] for e in healthy] == list(range(600))  # type: ignore[index]
    finally:
        live.stop()


def info_counter(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("subscribers", [50])
def test_many_subscribers_all_receive_every_event_in_order(
    shared_server: LiveServer, subscribers: int
) -> None:
    with shared_server.client() as client:
        create_run(client, "sse-many")
        readers = [
            collect_in_background(shared_server.url, {"run_id": "sse-many"}, count=30)
            for _ in range(subscribers)
        ]
        wait_for_subscribers(client, subscribers)
        for start in range(0, 30, 3):
            client.post("/api/runs/sse-many/events", json=metrics_batch(start, 3))
        for thread, _ in readers:
            thread.join(20)
    for _, received in readers:
        assert [e.data["step"] for e in received] == list(range(30))  # type: ignore[index]


def test_parse_handles_multiline_data_and_comments() -> None:
    lines = iter([": hi", "id: 7", "event: log", "data: line1", "data: line2", "", 'data: {"a": 1}', ""])
    events = list(parse(lines))
    assert events[0].id == 7 and events[0].name == "log" and events[0].data == "line1\nline2"
    assert events[1].data == {"a": 1} and events[1].name == "message"


def test_subscribers_asking_the_same_filter_share_one_copy_of_it() -> None:
    first = parse_filter(["r-1"], ["metrics"], [])
    same = parse_filter(["r-1"], ["metrics,metrics"], [])
    other = parse_filter(["r-2"], ["metrics"], [])
    assert first is same and first == same
    assert other != first and other.run_ids == frozenset({"r-2"})


def test_live_events_written_straight_to_the_socket_arrive_whole_in_chunks_of_every_size(
    threaded_server: ServerThread,
) -> None:
    """On uvicorn the broker writes each SSE message as one HTTP chunk to every socket itself (no ASGI
    send): chunk sizes from two to five hex digits must reach a standard client intact, twice over."""
    texts = ["é" * (size // 2) for size in (10, 1_000, 70_000)]  # chunk sizes count bytes: 2 bytes each
    stats = threaded_server.hub.broker.stats
    with httpx.Client(base_url=threaded_server.url, timeout=10) as client:
        create_run(client, "sse-chunks")
        params = {"run_id": "sse-chunks", "kinds": "log"}
        readers = [collect_in_background(threaded_server.url, params, count=3) for _ in range(2)]
        wait_for_subscribers(client, 2)
        direct, encoded = stats["direct"], stats["encoded"]
        for seq, text in enumerate(texts):
            event = {"seq": seq, "kind": "log", "data": {"text": text}}
            client.post("/api/runs/sse-chunks/events", json={"events": [event]})
        for thread, received in readers:
            thread.join(20)
            assert [e.data["data"]["text"] for e in received] == texts  # type: ignore[index]
    assert stats["direct"] - direct >= 2  # each reader's events, coalesced or not, past the ASGI send
    assert stats["encoded"] - encoded == len(texts)  # once each, not once a reader


def test_subscribers_of_one_filter_share_each_framed_message(threaded_server: ServerThread) -> None:
    """Four readers of the same run and kinds get one frame built per pass, not one each; a reader
    of another filter gets its own, and all of them get every event."""
    stats = threaded_server.hub.broker.stats
    with httpx.Client(base_url=threaded_server.url, timeout=10) as client:
        create_run(client, "sse-groups")
        same = {"run_id": "sse-groups", "kinds": "metrics"}
        readers = [collect_in_background(threaded_server.url, same, count=20) for _ in range(4)]
        readers.append(collect_in_background(threaded_server.url, {"run_id": "sse-groups"}, count=20))
        wait_for_subscribers(client, 5)
        direct, framed = stats["direct"], stats["framed"]
        for start in range(20):
            client.post("/api/runs/sse-groups/events", json=metrics_batch(start, 1))
        for thread, received in readers:
            thread.join(20)
            assert [e.data["step"] for e in received] == list(range(20))  # type: ignore[index]
    writes, frames = stats["direct"] - direct, stats["framed"] - framed
    assert writes >= 5 * 10 and frames * 2 <= writes  # shared: at most 2 frames a pass of 5 writes


def test_events_published_while_nobody_listened_reach_a_later_subscriber_from_the_ring_encoded_once(
    threaded_server: ServerThread,
) -> None:
    """With no subscriber the broker keeps events unencoded; the first reader encodes them, the next
    reads the same frames, with or without a filter, and every event arrives exactly as stored."""
    broker = threaded_server.hub.broker
    with httpx.Client(base_url=threaded_server.url, timeout=10) as client:
        wait_until(lambda: sum(broker.counts().values()) == 0, what="no subscriber left")
        create_run(client, "sse-later")
        before = broker.stats["encoded"]
        after = broker.head
        stored = client.post("/api/runs/sse-later/events", json=metrics_batch(0, 50)).json()
        assert stored["stored"] == 50
        unfiltered = sse_events(threaded_server.url, {"after": str(after)}, count=50)
        assert broker.stats["encoded"] - before >= 50  # from the ring, encoded at this first read
        again = broker.stats["encoded"]
        filtered = sse_events(threaded_server.url, {"after": str(after), "run_id": "sse-later"}, count=50)
        assert broker.stats["encoded"] == again  # encoded once
    for received in (unfiltered, filtered):
        assert [e.data["step"] for e in received] == list(range(50))  # type: ignore[index]
        assert [e.data["data"]["train/loss"] for e in received] == [1.0 / (i + 1) for i in range(50)]  # type: ignore[index]
        assert [e.id for e in received] == list(range(after + 1, after + 51))


def test_a_small_ring_trimmed_while_nobody_listened_still_serves_every_event_once(tmp_path: Path) -> None:
    """Frames not yet encoded leave the ring like encoded ones: a later subscriber gets the old events
    from the store, the rest from the ring, in order, none twice."""
    live = LiveServer(tmp_path / "d", ring_size="16").start()
    try:
        with httpx.Client(base_url=live.url, timeout=10) as client:
            create_run(client, "sse-small-ring")
            for start in range(0, 100, 10):
                client.post("/api/runs/sse-small-ring/events", json=metrics_batch(start, 10))
            params = {"run_id": "sse-small-ring", "kinds": "metrics", "after": "0"}
            received = sse_events(live.url, params, count=100)
        assert [e.data["step"] for e in received] == list(range(100))  # type: ignore[index]
        assert len({e.id for e in received}) == 100
    finally:
        live.stop()
