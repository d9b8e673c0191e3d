"""Two replicas behind a real nginx, configured by the very block docs/deploy.md shows: the SDK, the
CLI, MCP, the stream, the WebSocket and the dashboard (real Chromium) work through it, while the
replicas' Host and Origin checks still refuse a foreign name or page."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import LOGGER, LiveServer, RedisProcess, create_run, sse_events, wait_until
from tests.test_mcp import over_http
from trainpilot.server.runner import free_port

NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
PUBLIC = "trainpilot.test"


def documented_config(replicas: list[int], port: int, prefix: Path) -> str:
    """docs/deploy.md's nginx block, pointed at these replicas and this port, made runnable unprivileged."""
    block = re.search(r"```nginx\n(.*?)```", DEPLOY.read_text(), re.S)
    assert block is not None, "docs/deploy.md has no nginx block"
    config, upstreams = re.subn(
        r"    server 10\.0\.0\.\d+:8765 [^;]*;\n",
        "",
        block.group(1),
    )
    assert upstreams == 2
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in replicas)
    config = config.replace("    least_conn;", "    least_conn;\n" + servers.rstrip("\n"), 1)
    config, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", config)
    assert listens == 1
    temp = "".join(f"    {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy"))
    return textwrap.dedent(f"""\
        daemon off;
        master_process off;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{}}
        http {{
            access_log off;
        {temp}
        {config}
        }}
        """)


@pytest.fixture
def proxy(tmp_path: Path, postgres_url: str, redis: RedisProcess) -> Iterator[str]:
    if NGINX is None:
        pytest.skip("LOUD SKIP: nginx is not installed (make test installs Debian's nginx-light)")
    replicas = [
        LiveServer(tmp_path / name, store=postgres_url, broker=redis.url, allowed_hosts=PUBLIC).start()
        for name in ("a", "b")
    ]
    port = free_port()
    (tmp_path / "nginx.conf").write_text(documented_config([r.port for r in replicas], port, tmp_path))
    errors = tmp_path / "error.log"
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(errors)]
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert nginx.poll() is None, errors.read_text()
        try:
            return httpx.get(url + "/api/system/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=20, what="nginx to answer")
        yield url
    finally:
        nginx.terminate()
        nginx.wait(10)
        for replica in replicas:
            replica.stop()


def test_through_nginx_the_sdk_cli_mcp_stream_and_websocket_work_and_foreign_pages_do_not(
    proxy: str, tmp_path: Path
) -> None:
    script = textwrap.dedent("""\
        import sys, trainpilot
        run = trainpilot.init(project="proxy", server=sys.argv[1], data_dir=sys.argv[2])
        print(run.id)
        for s in range(200):
            run.log({"train/loss": 1 / (s + 1)}, step=s)
        run.finish()
        """)
    done = subprocess.run(
        [sys.executable, "-c", script, proxy, str(tmp_path / "sdk")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    with httpx.Client(base_url=proxy, timeout=10) as client:
        history = client.get("/api/metrics/history", params={"run_id": run_id}).json()
        assert history["series"]["train/loss"]["total"] == 200
        assert client.get("/api/runs", headers={"Host": f"{PUBLIC}:8080"}).status_code == 200
        assert client.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400
        own = client.post("/api/training/control", json={"action": "pause"}, headers={"Origin": proxy})
        assert own.status_code in (202, 409), own.text  # taken (409: the newest run has finished)
        foreign = client.post(
            "/api/training/control", json={"action": "pause"}, headers={"Origin": "http://x.y"}
        )
        assert foreign.status_code == 403
        assert "<title>" in client.get("/").text
    events = sse_events(proxy, {"run_id": run_id, "after": "0", "kinds": "metrics"}, count=1)
    assert events and events[0].name == "metrics"
    ws_url = proxy.replace("http://", "ws://") + "/api/ws"
    with connect(ws_url, origin=proxy, open_timeout=5) as sock:  # type: ignore[arg-type]
        sock.send(orjson.dumps({"op": "subscribe", "after": 0, "run_id": run_id, "kinds": "status"}).decode())
        replies = [orjson.loads(sock.recv(timeout=10)) for _ in range(2)]
        assert [r["op"] for r in replies] == ["subscribed", "events"]
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin="http://evil.example", open_timeout=5)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    cli = subprocess.run(
        [sys.executable, "-m", "trainpilot.cli", "runs", "--server", proxy],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and run_id in cli.stdout, cli.stderr

    async def mcp_runs() -> Any:
        async with over_http(proxy) as mcp:
            return await mcp.call_tool("list_runs", {})

    listed = asyncio.run(mcp_runs())
    assert not listed.is_error and run_id in str(listed.structured_content)


def test_the_dashboard_through_nginx_pauses_a_live_run(browser: Any, proxy: str, tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOGGER), proxy, str(tmp_path / "client")],
        stdout=subprocess.PIPE,
        text=True,
    ) as logger:
        assert logger.stdout is not None
        run_id = logger.stdout.readline().strip()
        page = browser.new_page()
        page.goto(f"{proxy}/#run={run_id}")
        page.wait_for_selector("#conn:has-text('live')", timeout=20_000)
        page.click('#controls button[data-action="pause"]')
        page.wait_for_selector("#ack:has-text('pause: applied')", timeout=20_000)
        page.click('#controls button[data-action="stop"]')
        page.wait_for_selector("#ack:has-text('stop: applied')", timeout=20_000)
        page.close()
        assert logger.wait(30) == 0
    with httpx.Client(base_url=proxy, timeout=10) as client:
        create_run(client, "after-proxy")  # the replicas still take writes
