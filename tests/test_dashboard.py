"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real server
and a real run logging from another process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LOGGER, LiveServer, wait_until
from trainpilot.server.runner import free_port

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class Page:
    """A page that records every uncaught error and console error, so a test can fail on them."""

    def __init__(self, browser: Any, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        self.page.goto(url)

    def points(self, group: str) -> int:
        value = self.page.get_attribute(f'.chart[data-group="{group}"]', "data-points", timeout=20_000)
        return int(value or 0)

    def last_step(self) -> float:
        value = self.page.evaluate("() => Math.max(...(state.series.get('train/loss')?.step || [0]))")
        return float(value)


def run_step(server: LiveServer, run_id: str) -> int:
    step: int = httpx.get(f"{server.url}/api/runs/{run_id}").json()["last_step"] or 0
    return step


def test_charts_grow_live_and_pause_stops_the_real_run_with_its_acknowledgement(
    browser: Any, server: LiveServer, logging_run: tuple[str, subprocess.Popen[str]]
) -> None:
    run_id, _ = logging_run
    page = Page(browser, f"{server.url}/#run={run_id}")
    wait_until(lambda: page.points("loss") > 5, what="the loss chart to fill")
    before = page.points("loss")
    wait_until(lambda: page.points("loss") > before + 10, what="the chart to grow live")
    assert page.page.inner_text("#conn") == "● live"

    page.page.click('#controls button[data-action="pause"]')
    page.page.wait_for_selector("#ack:has-text('pause: applied')", timeout=20_000)
    paused_at = run_step(server, run_id)
    page.page.wait_for_timeout(600)
    assert run_step(server, run_id) == paused_at, "the real run stopped advancing"
    assert page.page.inner_text("#run-status") == "paused"

    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

    page.page.click('#controls button[data-action="resume"]')
    page.page.wait_for_selector("#ack:has-text('resume: applied')", timeout=20_000)
    wait_until(lambda: run_step(server, run_id) > paused_at + 3, what="the run to advance after resume")
    assert page.errors == [] and page.console_errors == []
    page.page.close()


def test_the_page_reconnects_after_a_server_restart_and_shows_what_was_logged_meanwhile(
    browser: Any, server: LiveServer, logging_run: tuple[str, subprocess.Popen[str]]
) -> None:
    run_id, _ = logging_run
    page = Page(browser, f"{server.url}/#run={run_id}")
    wait_until(lambda: page.points("loss") > 5, what="the loss chart to fill")
    server.stop(kill=True)
    page.page.wait_for_selector("#conn[data-state=reconnecting]", timeout=20_000)
    page.page.wait_for_timeout(1500)  # the run keeps logging into its spool meanwhile
    server.start()
    page.page.wait_for_selector("#conn[data-state=live]", timeout=30_000)
    wait_until(lambda: run_step(server, run_id) > 0, what="the run's points to reach the restarted server")
    target = run_step(server, run_id)
    wait_until(
        lambda: page.last_step() >= target, what="the page to catch up with the points logged meanwhile"
    )
    steps = page.page.evaluate("() => state.series.get('train/loss').step")
    assert steps == sorted(set(steps)), "no duplicate and no reordering after the reconnect"
    assert steps[-1] - steps[0] + 1 == len(steps), "no gap after the reconnect"
    assert page.errors == []
    page.page.close()


def test_search_filters_the_run_list_and_compare_overlays_runs(browser: Any, server: LiveServer) -> None:
    with server.client() as client:
        for run_id, scale in (("alpha-run", 1.0), ("beta-run", 2.0)):
            client.post("/api/runs", json={"id": run_id, "project": "cmp", "name": run_id})
            events = [{"seq": i, "step": i, "data": {"train/loss": scale / (i + 1)}} for i in range(50)]
            client.post(f"/api/runs/{run_id}/events", json={"events": events})
    page = Page(browser, server.url + "/")
    page.page.wait_for_selector("#runs li[data-run=beta-run]")
    page.page.fill("#search", "alpha")
    page.page.wait_for_function("document.querySelectorAll('#runs li').length === 1")
    page.page.fill("#search", "")
    for run_id in ("alpha-run", "beta-run"):
        page.page.check(f"#runs li[data-run={run_id}] input[type=checkbox]")
    page.page.click("#compare-btn")
    page.page.wait_for_selector("#compare-chart .u-legend")
    legend = page.page.inner_text("#compare-chart .u-legend")
    assert "alpha-run" in legend and "beta-run" in legend
    assert page.page.input_value("#compare-key") == "train/loss"
    assert page.errors == [] and page.console_errors == []
    page.page.close()


def test_on_a_token_server_the_page_reads_with_the_token_from_its_address_and_streams_live(
    browser: Any, tmp_path: Path
) -> None:
    server = LiveServer(tmp_path / "token-data", token="s3cret").start()
    env = {**os.environ, "TRAINPILOT_TOKEN": "s3cret"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOGGER), server.url, str(tmp_path / "client")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        refused = Page(browser, f"{server.url}/#run={run_id}")
        refused.page.on("dialog", lambda dialog: dialog.dismiss())  # no token given at the prompt
        refused.page.wait_for_timeout(1000)
        assert refused.page.eval_on_selector_all(".chart", "charts => charts.length") == 0
        refused.page.close()

        page = Page(browser, f"{server.url}/#token=s3cret&run={run_id}")
        wait_until(lambda: page.points("loss") > 5, what="the loss chart to fill")
        before = page.points("loss")
        wait_until(
            lambda: page.points("loss") > before + 10, what="the chart to grow live over the signed URL"
        )
        assert page.page.inner_text("#conn") == "● live"
        assert "s3cret" not in page.page.url  # the token left the address bar
        assert page.errors == []
        page.page.close()
    finally:
        proc.kill()
        proc.communicate()
        server.stop()
    assert "s3cret" not in server.log.read_text()


def test_the_server_panel_shows_the_alert_webhooks_redacted_with_their_counters(
    browser: Any, tmp_path: Path
) -> None:
    hook = f"slack+http://127.0.0.1:{free_port()}/services/T0KEN-s3cret"  # nothing listens there
    server = LiveServer(tmp_path / "alerts-data", args=("--alert-webhook", hook)).start()
    try:
        page = Page(browser, server.url + "/")
        page.page.wait_for_selector("#alerts:has-text('pending')", timeout=20_000)
        text = page.page.inner_text("#alerts")
        assert "warning findings and above" in text
        assert f"{hook.removeprefix('slack+').split('/services')[0]} (slack): 0 sent, 0 failed" in text
        assert "s3cret" not in page.page.content()
        assert page.errors == [] and page.console_errors == []
        page.page.close()
    finally:
        server.stop()
