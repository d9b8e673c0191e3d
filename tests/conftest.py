"""Shared fixtures: the app in this process behind a test client, for finite exchanges; a real trainpilot
server in its own process, on a free loopback port, for endless streams, crashes, restarts and
anything that needs a real socket."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from trainpilot.client.sse import ServerEvent, parse
from trainpilot.server.app import create_app
from trainpilot.server.runner import ServerThread, free_port
from trainpilot.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POSTGRES_URL = os.environ.get("TRAINPILOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class LiveServer:
    """`trainpilot serve` as a child process; stop it gently or kill -9 it, then start it again."""

    def __init__(
        self, data_dir: Path, port: int | None = None, args: tuple[str, ...] = (), **env: str
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = args  # more `serve` flags
        self.env = {**os.environ, **{f"TRAINPILOT_{k.upper()}": v for k, v in env.items()}}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LiveServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "trainpilot.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "warning",
            *self.args,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/api/system/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start in {timeout}s: {self.log.read_text()}")

    def fill_disk_at(self, max_file_bytes: int) -> None:
        """From now on the server cannot grow a file past `max_file_bytes`: its writes fail with EFBIG,
        as on a full disk (Python ignores SIGXFSZ, so the write fails instead of killing it)."""
        assert self.proc is not None
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)


# A name of the server's own: the guard (server/guard.py) refuses a Host that is not one.
APP_URL = "http://127.0.0.1:8765"
# Either kind of client: an httpx.Client on a live server, or the in-process TestClient (an httpx2.Client).
Client = httpx.Client | TestClient


@contextlib.contextmanager
def in_process(data_dir: Path, store: str = "memory://", **settings: Any) -> Iterator[TestClient]:
    """The whole app in this process, its lifespan run (store opened, broker started), behind a test
    client that speaks REST and WebSocket to it without a socket: for finite exchanges.

    Responses stream (a test may read the first events of the SSE stream and close it), but the
    client takes no timeouts: a test that would wait on an endless stream belongs on a `LiveServer`.
    """
    app = create_app(Settings(data_dir=str(data_dir), store=store, **settings).check())
    with TestClient(app, base_url=APP_URL, client=("127.0.0.1", 50000)) as client:
        yield client


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    """A fresh in-process app on the memory store."""
    with in_process(tmp_path / "app-data") as client:
        yield client


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One in-process app for tests that only add their own runs."""
    with in_process(tmp_path_factory.mktemp("shared-app")) as client:
        yield client


class AppSocket:
    """A WebSocket to the in-process app with the `send`/`recv(timeout=)` of websockets' sync client, so
    the same helpers drive both. A close from the server raises `WebSocketDisconnect`."""

    def __init__(self, session: WebSocketTestSession) -> None:
        self.session = session

    def send(self, text: str) -> None:
        self.session.send_text(text)

    def recv(self, timeout: float = 10.0) -> str:
        # The session's own receive waits forever; a missing answer must fail the test, not hang it.
        async def receive() -> Any:
            with anyio.fail_after(timeout):
                return await self.session._send_rx.receive()

        message = self.session.portal.call(receive)
        self.session._raise_on_close(message)
        text: str = message["text"]
        return text


@contextlib.contextmanager
def app_socket(
    client: TestClient, query: str = "", headers: dict[str, str] | None = None
) -> Iterator[AppSocket]:
    """A WebSocket on /api/ws of the in-process app behind `client`."""
    url = APP_URL.replace("http://", "ws://") + "/api/ws" + query
    with client.websocket_connect(url, headers=dict(headers or {})) as session:
        yield AppSocket(session)


@pytest.fixture(scope="module")
def threaded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A real server (uvicorn on a socket) on a thread of this process, so a test can see its broker."""
    data = tmp_path_factory.mktemp("threaded")
    server = ServerThread(Settings(port=free_port(), data_dir=str(data), log_level="warning")).start()
    yield server
    server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server-data").start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for tests that only add their own runs and never restart it."""
    live = LiveServer(tmp_path_factory.mktemp("shared") / "data").start()
    yield live
    live.stop()


def sse_events(
    target: str | TestClient,
    params: dict[str, str] | None = None,
    *,
    headers: dict[str, str] | None = None,
    count: int,
    timeout: float = 10.0,
) -> list[ServerEvent]:
    """The first `count` events (heartbeats skipped) of the SSE stream of a live server's URL or of the
    in-process app behind a TestClient (which takes no timeout: the events must be there already)."""
    out: list[ServerEvent] = []
    if isinstance(target, TestClient):
        opened: Any = target.stream("GET", "/api/stream/metrics", params=params, headers=headers)
    else:
        opened = httpx.stream(
            "GET", target + "/api/stream/metrics", params=params, headers=headers, timeout=timeout
        )
    with opened as response:
        assert response.status_code == 200, response.read()
        for event in parse(response.iter_lines()):
            out.append(event)
            if len(out) >= count:
                break
    return out


def collect_in_background(
    url: str, params: dict[str, str], count: int
) -> tuple[threading.Thread, list[ServerEvent]]:
    """Read the first `count` events of an SSE stream on a thread of their own."""
    received: list[ServerEvent] = []

    def read() -> None:
        received.extend(sse_events(url, params, count=count, timeout=20))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, received


def wait_for_subscribers(client: Client, count: int, timeout: float = 10.0) -> None:
    """Until the server counts `count` live SSE subscribers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/api/system/info").json()["connections"]["sse"] >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} SSE subscribers connected")


def create_run(client: Client, run_id: str, project: str = "tests") -> dict[str, object]:
    response = client.post("/api/runs", json={"id": run_id, "project": project})
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body


def metrics_batch(start: int, count: int, seq_start: int | None = None) -> dict[str, object]:
    """`count` metrics events for steps start.., with seqs from `seq_start` (default: the step)."""
    first = start if seq_start is None else seq_start
    return {
        "events": [
            {
                "seq": first + i,
                "step": start + i,
                "data": {"train/loss": 1.0 / (start + i + 1), "train/acc": (start + i) / 1000},
            }
            for i in range(count)
        ]
    }


def wait_for_ack(url: str, run_id: str, command_id: int, timeout: float = 20.0) -> dict[str, Any]:
    """The data of the run's acknowledgement of `command_id` (applied or rejected), from the stream."""
    params = {"after": str(command_id), "run_id": run_id, "kinds": "control"}
    with httpx.stream("GET", url + "/api/stream/metrics", params=params, timeout=timeout) as response:
        for event in parse(response.iter_lines()):
            data = event.data.get("data", {}) if isinstance(event.data, dict) else {}
            if data.get("command_id") == command_id:
                return dict(data)
    raise AssertionError(f"no acknowledgement of command {command_id}")


def spooled_metrics(data_dir: Path) -> int:
    """Metrics events waiting in every spool file of an SDK data dir."""
    return sum(
        line.count(b'"kind":"metrics"')
        for path in (data_dir / "spool").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    )


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    """A redis-server of a test's own (no disk), on a free port, to kill and restart at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if done.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    if REDIS_SERVER is None:
        pytest.skip("LOUD SKIP: redis-server is not installed; the Redis broker is untested here")
    server = RedisProcess()
    server.start()
    yield server
    server.stop()


def postgres_admin() -> Any:
    """An autocommit connection to the real PostgreSQL at TRAINPILOT_TEST_POSTGRES_URL; without one,
    the test is skipped, saying why."""
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL} (TRAINPILOT_TEST_POSTGRES_URL): {reason}")


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A store URL on a new, empty PostgreSQL schema of its own, dropped afterwards."""
    schema = f"tp_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url(postgres_schema: str) -> str:
    """A store URL on a fresh PostgreSQL schema that `trainpilot migrate` has prepared."""
    from psycopg import AsyncConnection

    from trainpilot.store.postgres_migrations import migrate

    async def prepare() -> None:
        async with await AsyncConnection.connect(postgres_schema, autocommit=True) as conn:
            await migrate(conn)

    # on a thread of its own: a browser test's Playwright already runs an event loop on this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, prepare()).result()
    return postgres_schema


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip(
            "BROWSER TESTS SKIPPED: no chromium on this machine (make test installs Debian's 'chromium')"
        )
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="BROWSER TESTS SKIPPED: playwright missing"
    )
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        launched.close()


LOGGER = """
    import sys, time, trainpilot
    run = trainpilot.init(project="browser", name="live", server=sys.argv[1], data_dir=sys.argv[2])
    print(run.id, flush=True)
    step = 0
    while not run.should_stop and step < 20000:
        run.wait_if_paused()
        run.log({"train/loss": 1.0 / (step + 1), "val/loss": 1.2 / (step + 1), "lr": 0.1})
        step += 1
        time.sleep(0.05)
    run.finish()
"""


@pytest.fixture
def logging_run(server: LiveServer, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOGGER), server.url, str(tmp_path / "client")],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        yield run_id, proc
        proc.kill()
