"""Alerts to webhooks (server/alerts.py): real receivers on loopback ports, the real app in this process
or `trainpilot serve` in its own, findings from the real detectors or stored by a client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import Client, LiveServer, create_run, in_process, wait_until
from trainpilot.cli.main import build_parser
from trainpilot.cli.serve import serve_settings
from trainpilot.exceptions import ConfigError
from trainpilot.server.runner import free_port
from trainpilot.settings import Settings, parse_webhook

SECRET = "T0KEN-s3cret"  # in every receiver's path, as a real webhook's token is: it must never be shown
FAST = {"alert_backoff_s": 0.05}


class Receiver:
    """A webhook receiver on a free loopback port: answers the `statuses` in turn (then 200), each after
    `delay_s`, and records every request it gets."""

    def __init__(
        self, statuses: tuple[int, ...] = (), delay_s: float = 0.0, headers: dict[str, str] | None = None
    ) -> None:
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.headers = headers or {}
        self.attempts: list[dict[str, Any]] = []  # every request's body
        self.bodies: list[dict[str, Any]] = []  # the bodies answered 2xx: the alerts delivered
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.attempts.append(body)
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status < 300:
                        receiver.bodies.append(body)
                self.send_response(status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{SECRET}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.bodies) >= count, timeout, f"{count} alert(s) at the receiver")
        return self.bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def post(client: Client, run_id: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post(f"/api/runs/{run_id}/events", json={"events": events})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def insight(seq: int, kind: str, severity: str, message: str = "something is off") -> dict[str, Any]:
    """A finding as a client may store one (the detectors' own come from metrics)."""
    data = {"kind": kind, "severity": severity, "message": message, "suggestion": "look at it"}
    return {"seq": seq, "step": seq, "kind": "insight", "data": data}


def ending(seq: int, status: str) -> dict[str, Any]:
    return {"seq": seq, "step": seq, "kind": "status", "data": {"status": status}}


def alerts_info(client: Client) -> dict[str, Any]:
    info: dict[str, Any] = client.get("/api/system/info").json()["alerts"]
    return info


def test_without_webhooks_the_commit_listener_is_the_broker_alone_and_info_says_so(
    app_client: TestClient,
) -> None:
    hub = app_client.app.api.state.hub
    assert hub.store.on_commit == hub.broker.publish  # nothing added to the commit path
    assert alerts_info(app_client) == {
        "configured": False,
        "severity": "warning",
        "rate_limit": {"burst": 10, "refill_s": 6.0},
        "queued": 0,
        "deduplicated": 0,
        "webhooks": [],
    }


def test_a_detectors_critical_finding_and_a_warning_reach_the_webhook_as_generic_json(
    tmp_path: Path, receiver: Receiver
) -> None:
    with in_process(tmp_path, alert_webhooks=receiver.url, **FAST) as client:
        create_run(client, "nan-run", project="vision")
        post(client, "nan-run", [{"seq": 0, "step": 5, "data": {"loss": "nan", "acc": 0.5}}])
        (body,) = receiver.wait_for(1)
        post(client, "nan-run", [insight(1, "plateau", "warning", "the loss has not moved")])
        receiver.wait_for(2)
        info = alerts_info(client)
    assert body["source"] == "trainpilot" and body["type"] == "finding"
    assert body["run_id"] == "nan-run" and body["project"] == "vision" and body["run_name"] == "nan-run"
    assert body["kind"] == "nan_inf" and body["severity"] == "critical" and body["step"] == 5
    assert "loss" in body["message"] and body["suggestion"]
    assert body["url"] == "http://127.0.0.1:8765/#run=nan-run"
    assert body["text"].startswith("trainpilot [critical] nan_inf in run nan-run (vision) at step 5: ")
    assert body["text"].endswith(body["url"]) and isinstance(body["event_id"], int)
    second = receiver.bodies[1]
    assert (second["kind"], second["severity"], second["message"]) == (
        "plateau",
        "warning",
        "the loss has not moved",
    )
    (hook,) = info["webhooks"]
    assert info["configured"] is True and info["severity"] == "warning"
    assert hook == {
        "url": receiver.url.split("/hooks")[0],
        "format": "json",
        "sent": 2,
        "failed": 0,
        "dropped": 0,
        "pending": 0,
        "last_error": None,
    }


def test_slack_and_discord_bodies_keep_text_as_text(tmp_path: Path) -> None:
    slack, discord = Receiver(), Receiver()
    hooks = f"slack+{slack.url}, discord+{discord.url}"
    try:
        with in_process(tmp_path, alert_webhooks=hooks, **FAST) as client:
            create_run(client, "chat")
            post(client, "chat", [insight(0, "overfit", "critical", "<!channel> val & train @everyone")])
            slack.wait_for(1)
            discord.wait_for(1)
            formats = [h["format"] for h in alerts_info(client)["webhooks"]]
    finally:
        slack.close()
        discord.close()
    assert formats == ["slack", "discord"]
    assert slack.bodies == [
        {
            "text": "trainpilot [critical] overfit in run chat (tests) at step 0: &lt;!channel&gt; val &amp; "
            "train @everyone http://127.0.0.1:8765/#run=chat"
        }
    ]
    (body,) = discord.bodies
    assert set(body) == {"content", "allowed_mentions"} and body["allowed_mentions"] == {"parse": []}
    assert body["content"].startswith(
        "trainpilot [critical] overfit in run chat (tests) at step 0: <!channel>"
    )


def test_the_same_finding_alerts_once_per_run_and_a_higher_severity_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    with in_process(tmp_path, alert_webhooks=receiver.url, **FAST) as client:
        create_run(client, "dup")
        post(client, "dup", [{"seq": 0, "step": 5, "data": {"loss": "nan"}}])
        post(client, "dup", [{"seq": 1, "step": 6, "data": {"g": "inf"}}])  # a second nan_inf insight
        post(client, "dup", [insight(2, "plateau", "warning"), insight(3, "plateau", "warning")])
        post(client, "dup", [insight(4, "plateau", "critical"), insight(5, "plateau", "warning")])
        create_run(client, "other")  # the same detector on another run is news
        post(client, "other", [insight(0, "plateau", "warning"), ending(1, "failed")])
        receiver.wait_for(5)
        stored = client.get("/api/runs/dup/insights").json()["insights"]
        info = alerts_info(client)
    said = [(b["run_id"], b["type"], b["kind"], b["severity"]) for b in receiver.bodies]
    assert said == [
        ("dup", "finding", "nan_inf", "critical"),
        ("dup", "finding", "plateau", "warning"),
        ("dup", "finding", "plateau", "critical"),
        ("other", "finding", "plateau", "warning"),
        ("other", "run_ended", None, None),
    ]
    assert [i["kind"] for i in stored].count("nan_inf") == 2  # both stored; one alerted
    assert info["deduplicated"] == 3 and info["webhooks"][0]["sent"] == 5


def test_a_run_ending_failed_stopped_or_lost_alerts_once_each_and_finished_not_at_all(
    tmp_path: Path, receiver: Receiver
) -> None:
    with in_process(tmp_path / "a", alert_webhooks=receiver.url, **FAST) as client:
        for run_id, status in (("f", "failed"), ("s", "stopped"), ("ok", "finished")):
            create_run(client, run_id)
            post(client, run_id, [ending(1, status)])
            post(client, run_id, [ending(2, status)])  # a late re-send: stored, not alerted again
        receiver.wait_for(2)
    with in_process(tmp_path / "b", alert_webhooks=receiver.url, run_timeout_s=0.4, **FAST) as client:
        create_run(client, "silent")  # then nothing: the liveness watch marks it lost
        receiver.wait_for(3)
    ended = [(b["run_id"], b["status"], b["type"]) for b in receiver.bodies]
    assert ended == [
        ("f", "failed", "run_ended"),
        ("s", "stopped", "run_ended"),
        ("silent", "lost", "run_ended"),
    ]
    lost = receiver.bodies[2]
    assert lost["text"].startswith(
        "trainpilot: run silent (tests) lost: nothing heard from the run for 0.4 s"
    )


def test_findings_below_the_severity_threshold_are_not_sent(tmp_path: Path, receiver: Receiver) -> None:
    with in_process(tmp_path / "w", alert_webhooks=receiver.url, **FAST) as client:
        create_run(client, "w")
        post(
            client,
            "w",
            [insight(0, "hint", "info"), insight(1, "odd", "bogus"), insight(2, "slow", "warning")],
        )
        receiver.wait_for(1)  # each webhook's alerts go in order: had the info one gone, it came first
    with in_process(tmp_path / "c", alert_webhooks=receiver.url, alert_severity="critical", **FAST) as client:
        create_run(client, "c")
        post(client, "c", [insight(0, "slow", "warning"), insight(1, "nan_inf", "critical")])
        receiver.wait_for(2)
        assert alerts_info(client)["severity"] == "critical"
    assert [(b["run_id"], b["kind"]) for b in receiver.bodies] == [("w", "slow"), ("c", "nan_inf")]


def test_failed_deliveries_are_retried_with_backoff_and_a_refusal_is_not(tmp_path: Path) -> None:
    flaky = Receiver(statuses=(500, 500))
    refusing = Receiver(statuses=(404,))
    limited = Receiver(statuses=(429,), headers={"retry-after": "0"})
    hooks = " ".join(r.url for r in (flaky, refusing, limited))
    try:
        with in_process(tmp_path, alert_webhooks=hooks, **FAST) as client:
            create_run(client, "retry")
            post(client, "retry", [insight(0, "nan_inf", "critical")])
            flaky.wait_for(1)
            limited.wait_for(1)
            wait_until(lambda: alerts_info(client)["webhooks"][1]["failed"] == 1, 10, "the refusal to count")
            info = alerts_info(client)
            prometheus = client.get("/metrics").text
    finally:
        for r in (flaky, refusing, limited):
            r.close()
    assert len(flaky.attempts) == 3 and len(flaky.bodies) == 1
    assert len(refusing.attempts) == 1 and refusing.bodies == []  # a 404 is not worth a retry
    assert len(limited.attempts) == 2 and len(limited.bodies) == 1
    counts = [(h["sent"], h["failed"], h["dropped"], h["pending"]) for h in info["webhooks"]]
    assert counts == [(1, 0, 0, 0), (0, 1, 0, 0), (1, 0, 0, 0)]
    assert [h["last_error"] for h in info["webhooks"]] == ["HTTP 500", "HTTP 404", "HTTP 429"]
    host = flaky.url.split("/hooks")[0]
    assert f'trainpilot_alerts_total{{outcome="sent",url="{host}",webhook="0"}} 1.0' in prometheus
    assert 'outcome="failed",url=' in prometheus and "trainpilot_alerts_pending{" in prometheus
    assert SECRET not in json.dumps(info) and SECRET not in prometheus


def test_over_the_rate_limit_alerts_are_dropped_counted_and_then_summed_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    with in_process(
        tmp_path, alert_webhooks=receiver.url, alert_burst=2, alert_refill_s=0.3, **FAST
    ) as client:
        create_run(client, "burst")
        post(client, "burst", [insight(i, f"kind-{i}", "critical") for i in range(5)])
        receiver.wait_for(3)
        (hook,) = alerts_info(client)["webhooks"]
    first, second, summary = receiver.bodies
    assert (first["kind"], second["kind"]) == ("kind-0", "kind-1")
    assert summary["type"] == "held_back" and summary["held_back"] == 3
    assert summary["text"].startswith(
        "trainpilot: 3 alerts held back by this webhook's rate limit (2 at once"
    )
    assert (hook["sent"], hook["dropped"], hook["pending"]) == (2, 3, 0)


def timed_ingest(client: httpx.Client, run_id: str, batch: int, batches: int, start: int) -> float:
    began = time.perf_counter()
    for b in range(batches):
        events = [
            {"seq": start + b * batch + i, "step": start + b * batch + i, "data": {"loss": 1.0}}
            for i in range(batch)
        ]
        assert client.post(f"/api/runs/{run_id}/events", json={"events": events}).status_code == 200
    return time.perf_counter() - began


def busy_hooks(client: Client) -> list[int]:
    """Whether each webhook has given up on an alert yet (the first) and is still busy (the second)."""
    down, slow = alerts_info(client)["webhooks"]
    return [int(down["failed"] > 0), int(slow["pending"] > 0)]


def test_a_down_or_slow_receiver_never_slows_ingest_and_every_event_is_stored(tmp_path: Path) -> None:
    slow = Receiver(delay_s=3.5)
    down = f"http://127.0.0.1:{free_port()}/hooks/{SECRET}"  # nothing listens: connection refused
    plain = LiveServer(tmp_path / "plain").start()
    alerting = LiveServer(
        tmp_path / "alerting",
        args=("--alert-webhook", down, "--alert-webhook", slow.url),
        alert_backoff_s="0.05",
        alert_burst="1000",  # no rate limit: both webhooks stay busy through the measurement
    ).start()
    try:
        with plain.client() as quiet, alerting.client() as busy:
            for client in (quiet, busy):
                create_run(client, "r")
            findings = [insight(i, f"kind-{i}", "critical") for i in range(300)]
            post(busy, "r", findings)  # more alerts than the webhooks' queues hold
            wait_until(lambda: busy_hooks(busy) == [1, 1], 10, "one given up on, the other busy")
            timed_ingest(quiet, "r", 50, 5, 1000)  # warm both up alike
            timed_ingest(busy, "r", 50, 5, 1000)
            without = with_alerts = 0.0
            for round_ in range(4):  # interleaved, so a noisy moment hits both
                start = 2000 + round_ * 500
                without += timed_ingest(quiet, "r", 50, 10, start)
                with_alerts += timed_ingest(busy, "r", 50, 10, start)
            info = alerts_info(busy)
            history = busy.get("/api/metrics/history", params={"run_id": "r", "keys": "loss"}).json()
            stored = busy.get("/api/runs/r/insights", params={"limit": 1000}).json()["insights"]
        print(f"ingest with alerts {with_alerts:.3f} s, without {without:.3f} s")
        assert with_alerts < 3 * without + 0.5, (with_alerts, without)
        assert history["series"]["loss"]["total"] == 250 + 4 * 500  # every point stored
        assert [i["kind"] for i in stored if i["kind"].startswith("kind-")] == [
            f"kind-{i}" for i in range(300)
        ]
        down_hook, slow_hook = info["webhooks"]
        assert down_hook["url"] == down.split("/hooks")[0] and down_hook["last_error"] == "ConnectError"
        assert down_hook["failed"] >= 1 and slow_hook["dropped"] > 0  # queue full: dropped, counted
        alerted = {(i["kind"], i["severity"]) for i in stored if i["severity"] in ("warning", "critical")}
        for hook in (down_hook, slow_hook):  # every alert is accounted for, none twice
            assert sum(hook[n] for n in ("sent", "failed", "dropped", "pending")) + info["queued"] == len(
                alerted
            )
        began = time.monotonic()
        alerting.stop()  # the slow webhook still has alerts pending: a short grace, then abandoned
        assert time.monotonic() - began < 10
        log = alerting.log.read_text()
        assert "pending alert(s) abandoned at shutdown" in log and SECRET not in log
    finally:
        plain.stop()
        alerting.stop()
        slow.close()


def test_the_flags_and_the_environment_name_the_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TRAINPILOT_ALERT_WEBHOOKS", "https://a.example/x,https://b.example/y  json+http://c/z"
    )
    monkeypatch.setenv("TRAINPILOT_ALERT_SEVERITY", "critical")
    from_env = serve_settings(build_parser().parse_args(["serve"]))
    assert [(w.redacted, w.format) for w in from_env.webhooks] == [
        ("https://a.example", "json"),
        ("https://b.example", "json"),
        ("http://c", "json"),
    ]
    assert from_env.alert_severity == "critical"
    flags = ["serve", "--alert-webhook", "https://hooks.slack.com/services/T/B/x", "--alert-webhook"]
    flags += ["https://discord.com/api/webhooks/1/t", "--alert-severity", "warning"]
    settings = serve_settings(build_parser().parse_args(flags))  # the flags replace the variable
    assert [w.format for w in settings.webhooks] == ["slack", "discord"]
    assert settings.alert_severity == "warning"
    assert "hooks.slack.com" not in repr(settings)  # a webhook URL is a secret
    assert parse_webhook("discord+https://example.com/hook").format == "discord"
    assert parse_webhook("https://discord.com/not-a-webhook").format == "json"
    with pytest.raises(ConfigError, match="--alert-severity"):
        Settings(alert_severity="info").check()


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--alert-webhook", f"ftp://example.com/{SECRET}"], {}),
        ([], {"TRAINPILOT_ALERT_WEBHOOKS": f"https://ok.example/x hooks.slack.com/{SECRET}"}),
    ],
    ids=["flag", "env"],
)
def test_a_bad_webhook_url_is_a_one_line_error_naming_the_flag(
    tmp_path: Path, flags: list[str], env: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainpilot.cli", "serve", "--data-dir", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--alert-webhook (TRAINPILOT_ALERT_WEBHOOKS)" in line and "http(s) URL" in line
    assert SECRET not in line
