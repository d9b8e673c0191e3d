"""What a hostile web page can do to the default server, tried in real Chromium: a page served from
another local port cannot pause a run or read its events, and text stored by anyone renders as text."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_until
from trainpilot.server.runner import free_port

ATTACK = """<!doctype html><html><body><script>
const target = "http://127.0.0.1:%(port)d", run = "%(run)s";
const seen = window.seen = {ws: "pending", wsMessages: 0, es: "pending", esMessages: 0, read: "pending",
                             jsonControl: "pending"};
const ws = new WebSocket("ws://127.0.0.1:%(port)d/api/ws");
ws.onopen = () => {
  seen.ws = "open";
  ws.send(JSON.stringify({op: "control", run_id: run, action: "pause"}));
  ws.send(JSON.stringify({op: "subscribe", after: 0}));
};
ws.onmessage = () => { seen.wsMessages++; };
ws.onerror = () => { if (seen.ws === "pending") seen.ws = "refused"; };
const es = new EventSource(target + "/api/stream/metrics?after=0");
for (const kind of ["message", "metrics", "status", "control"]) {
  es.addEventListener(kind, () => { seen.esMessages++; });
}
es.onerror = () => { seen.es = "refused"; es.close(); };
fetch(target + "/api/runs").then((r) => r.text())
  .then((t) => { seen.read = t; }, () => { seen.read = "refused"; });
fetch(target + "/api/training/control", {method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({run_id: run, action: "pause"})}).then(() => { seen.jsonControl = "sent"; },
      () => { seen.jsonControl = "refused"; });
// "simple" requests: no preflight, the page cannot read the answer, but the server must not act on them
const simple = {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"}};
fetch(target + "/api/training/control", {...simple, body: JSON.stringify({run_id: run, action: "stop"})});
fetch(target + "/api/runs/" + run + "/events",
      {...simple, body: JSON.stringify({events: [{seq: 10000000, step: 10000000, data: {forged: 1}}]})});
const form = document.createElement("form");
form.method = "POST"; form.action = target + "/api/training/control"; form.target = "sink";
form.enctype = "text/plain";
const field = document.createElement("input");
field.name = '{"run_id": "' + run + '", "action": "stop", "x": "'; field.value = '"}';
form.append(field); document.body.append(form);
const sink = document.createElement("iframe"); sink.name = "sink"; document.body.append(sink);
form.submit();
</script></body></html>"""

PAYLOAD = '<img src=x onerror="window.__xss=(window.__xss||0)+1">'


@pytest.fixture
def attacker_site() -> Iterator[tuple[int, dict[str, bytes]]]:
    """Another local web server: what it serves is whatever the test puts in `pages`."""
    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield site.server_address[1], pages
    site.shutdown()
    site.server_close()


def test_a_page_from_another_local_port_cannot_pause_a_run_or_read_its_events(
    browser: Any,
    server: LiveServer,
    logging_run: tuple[str, subprocess.Popen[str]],
    attacker_site: tuple[int, dict[str, bytes]],
) -> None:
    run_id, proc = logging_run
    port, pages = attacker_site
    pages["/"] = (ATTACK % {"port": server.port, "run": run_id}).encode()
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function(
        "() => ['ws', 'es', 'read', 'jsonControl'].every((k) => window.seen[k] !== 'pending')", timeout=20_000
    )
    page.wait_for_timeout(1500)  # the simple requests and the form have long arrived
    seen = page.evaluate("() => window.seen")
    assert seen == {
        "ws": "refused",
        "wsMessages": 0,
        "es": "refused",
        "esMessages": 0,
        "read": "refused",
        "jsonControl": "refused",
    }
    page.close()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        run = client.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "running" and "forged" not in run["metrics"]
        step = run["last_step"]
        wait_until(
            lambda: client.get(f"/api/runs/{run_id}").json()["last_step"] > step, what="the run to go on"
        )
    assert proc.poll() is None, "the run was not stopped"


def test_text_stored_by_anyone_renders_as_text(browser: Any, server: LiveServer) -> None:
    with server.client() as client:
        body = {"id": "xss", "project": PAYLOAD, "name": PAYLOAD, "config": {"augment": PAYLOAD}}
        assert client.post("/api/runs", json=body).status_code == 201
        events = [
            {"seq": 0, "step": 1, "kind": "metrics", "data": {PAYLOAD: 1.0, "train/loss": 2.0}},
            {"seq": 1, "step": 2, "kind": "metrics", "data": {PAYLOAD: 0.5, "train/loss": 1.0}},
            {
                "seq": 2,
                "step": 2,
                "kind": "insight",
                "data": {"kind": PAYLOAD, "severity": PAYLOAD, "message": PAYLOAD, "suggestion": PAYLOAD},
            },
            {"seq": 3, "step": 2, "kind": "media", "data": {"type": "image", "name": PAYLOAD, "url": "x"}},
        ]
        assert client.post("/api/runs/xss/events", json={"events": events}).status_code == 200
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/#run=xss")
    page.wait_for_selector("#insights li:not(:has-text('none yet'))", timeout=20_000)
    page.wait_for_selector(".chart", timeout=20_000)
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.__xss") is None
    assert page.evaluate('() => document.querySelectorAll(\'img[src="x"], img[src$="/x"]\').length') == 0
    assert PAYLOAD in page.inner_text("#runs")
    assert PAYLOAD in page.inner_text("#run-title")
    assert PAYLOAD in page.inner_text("#run-step")
    assert PAYLOAD in page.inner_text("#insights")
    assert PAYLOAD in page.text_content("#config")
    assert PAYLOAD in page.inner_text("#charts")
    headers = httpx.get(server.url + "/", timeout=5).headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    page.close()
