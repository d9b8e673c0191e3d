"""The `trainpilot` command.

trainpilot serve [--host H] [--port P] [--data-dir D]     run the server, print its URL
trainpilot migrate --store postgresql://...               create or upgrade a PostgreSQL store's schema
trainpilot demo                                           server + a real training run; Ctrl-C ends it
trainpilot train [--data digits] [--model cnn] ...        the reference trainer (see `train --help`)
trainpilot watch LOGDIR                                   stream a TensorBoard directory's scalars
trainpilot runs                                           a table of runs
trainpilot tail RUN                                       live metrics, resuming after reconnects
trainpilot control RUN ACTION [VALUE]                     pause | resume | stop | checkpoint | set_lr
trainpilot analyze SOURCE [--json]                        find training problems offline
trainpilot ask RUN "QUESTION"                             ask the advisor about a run
trainpilot mcp                                            an MCP server on stdio, for assistants
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from trainpilot.client.rest import auth_headers, env_token
from trainpilot.events import ACTIONS
from trainpilot.settings import DEFAULT_PORT

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"
T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except CLIError as exc:
        print(f"trainpilot: {exc}", file=sys.stderr)
        return 1


class CLIError(Exception):
    """A problem to report in one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainpilot", description="Observe, control and explain training.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    add_serve_flags(serve)
    serve.set_defaults(func=cmd_serve)

    export = sub.add_parser(
        "export",
        help="write runs from a store to a JSON-lines file",
        description="Runs and all their events, for `trainpilot import` into another store. Reads the "
        "store directly (a running server may keep serving it). Images stay in <data dir>/media.",
    )
    add_store_flags(export)
    export.add_argument("--run", action="append", default=[], help="a run id (repeatable; default: all)")
    export.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser(
        "import",
        help="read runs exported by `trainpilot export` into a store",
        description="Runs already in the target store are skipped, so importing twice stores nothing "
        "twice. Import while no server writes to the target store: servers keep per-run state.",
    )
    imp.add_argument("file", help="the export (JSON lines; - for stdin)")
    add_store_flags(imp)
    imp.set_defaults(func=cmd_import)

    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the schema of a PostgreSQL store",
        description="Applies the schema versions the database lacks, all in one transaction; safe to run "
        "again and from several replicas at once. `serve` refuses a PostgreSQL store until this has run. "
        "SQLite creates its own schema and needs nothing.",
    )
    migrate.add_argument(
        "--store",
        default=os.environ.get("TRAINPILOT_STORE"),
        help="store URL, e.g. postgresql://user@host:5432/db (env TRAINPILOT_STORE)",
    )
    migrate.set_defaults(func=cmd_migrate)

    demo = sub.add_parser(
        "demo",
        help="start the server, train the default model on digits for real, keep serving until Ctrl-C",
        description="Starts the server in this process on the embedded SQLite store, trains a small CNN "
        "on scikit-learn's digits (about a minute on two CPU cores), prints the server and stream URLs, "
        "and keeps serving after training ends until Ctrl-C. Every `trainpilot train` flag works here.",
    )
    demo.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one if taken)")
    demo.add_argument(
        "--data-dir", default="./trainpilot-data", help="store and spool (default ./trainpilot-data)"
    )
    demo.add_argument("--project", default="demo")
    demo.add_argument("--exit", action="store_true", help="stop the server when training ends")
    _train_flags(demo, demo=True)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train with the reference trainer, streaming to a server")
    add_server_flag(train)
    train.add_argument("--serve", action="store_true", help="run the server inside this process instead")
    train.add_argument("--data-dir", default="./trainpilot-data", help="spool (and store, with --serve)")
    train.add_argument("--project", default="trainpilot")
    train.add_argument("--name", help="run name (default: the run id)")
    _train_flags(train, demo=False)
    train.set_defaults(func=cmd_train)

    watch = sub.add_parser("watch", help="stream a TensorBoard log directory into trainpilot")
    watch.add_argument("logdir", help="the directory a training program writes event files to")
    add_server_flag(watch)
    watch.add_argument("--project", help="project of the runs (default: the directory's name)")
    watch.add_argument("--data-dir", default="./trainpilot-data", help="spool and watch state")
    watch.add_argument("--token", default=os.environ.get("TRAINPILOT_TOKEN"))
    watch.add_argument("--poll", type=float, default=1.0, help="seconds between reads (default 1)")
    watch.add_argument("--once", action="store_true", help="read what is there, send it, exit")
    watch.set_defaults(func=cmd_watch)

    analyze = sub.add_parser("analyze", help="find training problems in a run, offline")
    analyze.add_argument("source", help="a TensorBoard log directory, a JSON(L) file of events, or a run id")
    analyze.add_argument("--server", help="the server holding the run id")
    analyze.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    analyze.set_defaults(func=cmd_analyze)

    ask = sub.add_parser("ask", help="ask the advisor about a run")
    ask.add_argument("run", help="run id")
    ask.add_argument("question")
    add_server_flag(ask)
    ask.set_defaults(func=cmd_ask)

    mcp = sub.add_parser(
        "mcp",
        help="an MCP server on stdio for assistants (Claude Desktop, IDEs, local agents)",
        description="Speaks the Model Context Protocol on stdin/stdout and calls the trainpilot server at "
        "--server: list runs, read summaries, metrics, history and findings, and control runs (with "
        "--token when the server has one). The server itself also serves MCP at /mcp (streamable HTTP).",
    )
    add_server_flag(mcp)
    mcp.add_argument(
        "--token", default=env_token(), help="a token: the write token for control (env TRAINPILOT_TOKEN)"
    )
    mcp.set_defaults(func=cmd_mcp)

    runs = sub.add_parser("runs", help="list runs")
    add_server_flag(runs)
    runs.add_argument("--project")
    runs.add_argument("--limit", type=int, default=50)
    runs.set_defaults(func=cmd_runs)

    tail = sub.add_parser("tail", help="print a run's live events")
    tail.add_argument("run", help="run id")
    add_server_flag(tail)
    tail.add_argument("--after", type=int, help="start after this event id (default: from now)")
    tail.add_argument("--keys", help="comma-separated metric names")
    tail.set_defaults(func=cmd_tail)

    control = sub.add_parser("control", help="send a command to a run")
    control.add_argument("run", help="run id")
    control.add_argument("action", choices=sorted(ACTIONS))
    control.add_argument("value", nargs="?", type=float, help="the learning rate, for set_lr")
    add_server_flag(control)
    control.add_argument("--token", default=os.environ.get("TRAINPILOT_TOKEN"))
    control.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the acknowledgement (0: don't)"
    )
    control.set_defaults(func=cmd_control)
    return parser


def _train_flags(p: argparse.ArgumentParser, demo: bool) -> None:
    from trainpilot.trainer.config import add_flags

    add_flags(p)


def add_server_flag(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("TRAINPILOT_SERVER", DEFAULT_SERVER)
    p.add_argument("--server", default=default, help="server URL (env TRAINPILOT_SERVER)")


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--data-dir", help="where the SQLite store lives (default ./trainpilot-data)")
    p.add_argument(
        "--store",
        help="store URL: sqlite:///path/db, postgresql://user@host/db or memory:// "
        "(env TRAINPILOT_STORE; default: SQLite in the data dir)",
    )
    p.add_argument(
        "--broker",
        help="live fan-out: memory:// (default, one server) or redis://host:6379/0 for several replicas "
        "sharing one store (env TRAINPILOT_BROKER)",
    )
    p.add_argument("--token", help="write token: needed for changes, and reads too (env TRAINPILOT_TOKEN)")
    p.add_argument(
        "--read-token", help="an optional read-only token, for viewers (env TRAINPILOT_READ_TOKEN)"
    )
    p.add_argument("--cors-origins", help="comma-separated origins allowed to call the API (default none)")
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated names the server answers to besides loopback and its own address, "
        "e.g. the name a reverse proxy forwards (env TRAINPILOT_ALLOWED_HOSTS)",
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store URL (env TRAINPILOT_STORE; default: SQLite in the data dir)")
    p.add_argument("--data-dir", help="data dir of the default SQLite store (default ./trainpilot-data)")


def _with_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    """Run `work` on the store the flags name; problems become one-line errors."""
    import asyncio

    from trainpilot.exceptions import TrainpilotError
    from trainpilot.settings import Settings

    try:
        return asyncio.run(
            using_store(Settings.from_env(data_dir=args.data_dir, store=args.store).store_url, work)
        )
    except (TrainpilotError, OSError) as exc:
        raise CLIError(str(exc)) from None


async def using_store(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store at `url`, run `work` on it, close it."""
    from trainpilot.store import open_store

    store = open_store(url)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def cmd_export(args: argparse.Namespace) -> int:
    from trainpilot.store.transfer import export_runs

    async def work(store: Any) -> int:
        if args.output == "-":
            return await export_runs(store, sys.stdout.buffer, args.run, progress=_note)
        with open(args.output, "wb") as out:
            return await export_runs(store, out, args.run, progress=_note)

    _note(f"exported {_with_store(args, work):,} events")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from trainpilot.store.transfer import import_runs

    async def work(store: Any) -> int:
        if args.file == "-":
            return await import_runs(store, sys.stdin.buffer, progress=_note)
        with open(args.file, "rb") as lines:
            return await import_runs(store, lines, progress=_note)

    _note(f"imported {_with_store(args, work):,} events")
    return 0


def _note(text: str) -> None:
    """Progress on stderr: stdout may be the export itself."""
    print(text, file=sys.stderr, flush=True)


async def _opens(store: Any) -> None:
    """Nothing: opening is the check (a wrong URL or an unmigrated database is one line, not a traceback)."""


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from trainpilot.exceptions import TrainpilotError
    from trainpilot.server.runner import serve_forever
    from trainpilot.settings import Settings
    from trainpilot.store import redact_url

    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        store=args.store,
        broker=args.broker,
        token=args.token,
        read_token=args.read_token,
        cors_origins=args.cors_origins,
        allowed_hosts=args.allowed_hosts,
        log_level=args.log_level,
    )
    if settings.port == 0:  # any free port, named in the banner (uvicorn would pick one it never tells)
        from trainpilot.server.runner import free_port

        settings = dataclasses.replace(settings, port=free_port(settings.host))
    try:
        settings.check()
        asyncio.run(using_store(settings.store_url, _opens))
    except TrainpilotError as exc:
        raise CLIError(str(exc)) from None

    store = redact_url(settings.store_url)
    print(
        f"trainpilot {args.command}: {settings.url}/  (store {store}, broker {redact_url(settings.broker)}; "
        "Ctrl-C to stop)",
        flush=True,
    )
    print(f"  live stream: curl -N {settings.url}/api/stream/metrics", flush=True)
    print(f"  API docs:    {settings.url}/docs", flush=True)
    serve_forever(settings)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from trainpilot.exceptions import TrainpilotError
    from trainpilot.store import POSTGRES_SCHEMES, psycopg_missing, redact_url

    url = args.store
    if not url:
        raise CLIError("which store? give --store postgresql://user@host/db (or set TRAINPILOT_STORE)")
    if url.split(":", 1)[0] not in POSTGRES_SCHEMES:
        print(f"nothing to migrate: {redact_url(url)} is not PostgreSQL (SQLite makes its own schema)")
        return 0
    try:
        from trainpilot.store.postgres_migrations import migrate_url

        applied, version = asyncio.run(migrate_url(url))
    except ImportError as exc:
        raise CLIError(str(psycopg_missing(exc))) from None
    except TrainpilotError as exc:
        raise CLIError(str(exc)) from None
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    print(f"{redact_url(url)}: schema at version {version}" + ("" if applied else " (up to date)"))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import httpx

    from trainpilot.client.sse import parse

    url = f"{args.server.rstrip('/')}/api/runs/{args.run}/ask"
    try:
        with httpx.stream(
            "POST",
            url,
            json={"question": args.question},
            headers=auth_headers(env_token()),
            timeout=httpx.Timeout(120, connect=5),
        ) as r:
            if r.status_code != 200:
                r.read()
                raise CLIError(f"POST {url}: HTTP {r.status_code}: {r.text[:200]}")
            for event in parse(r.iter_lines()):
                data = event.data if isinstance(event.data, dict) else {}
                if event.name == "token":
                    print(data.get("text", ""), end="", flush=True)
                elif event.name == "error":
                    print()
                    raise CLIError(str(data.get("message")))
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach {args.server}: {exc}") from None
    print()
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from trainpilot.server.mcp import remote

    remote(args.server, args.token).run("stdio")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from trainpilot.analysis import analyze_events
    from trainpilot.cli.sources import load

    try:
        runs = load(args.source, args.server)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    results = [{"run": name, **f.as_data()} for name, events in runs.items() for f in analyze_events(events)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [["RUN", "STEP", "SEVERITY", "KIND", "FINDING"]]
    rows += [[r["run"], str(r["step"]), r["severity"], r["kind"], r["message"]] for r in results]
    print_table(rows)
    if not results:
        print(f"no problems found in {len(runs)} run(s)")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from trainpilot.tensorboard.tailer import watch

    try:
        return watch(
            args.logdir,
            server=args.server,
            project=args.project,
            data_dir=args.data_dir,
            token=args.token,
            poll_s=args.poll,
            once=args.once,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    """Also under torchrun, on every rank: `torchrun --nproc-per-node 2 -m trainpilot.cli train ...`."""
    import trainpilot
    from trainpilot.trainer.train import join_process_group, leave_process_group

    cfg = _config(args)
    join_process_group(cfg.device)
    try:
        try:
            run = trainpilot.init(
                project=args.project,
                name=args.name,
                config=_asdict(cfg),
                server=args.server,
                serve=args.serve,
                data_dir=args.data_dir,
                run_id=_checkpoint_run_id(cfg.resume) if cfg.resume else None,
            )
        except RuntimeError as exc:  # e.g. --serve under torchrun
            raise CLIError(str(exc)) from None
        return _train(cfg, run)
    finally:
        leave_process_group()


def _checkpoint_run_id(path: str) -> str:
    """A resumed training continues its run: same id, so its curves go on where they stopped."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise CLIError(f"cannot read checkpoint {path}: {exc}") from None
    run_id: str = state["run_id"]
    return run_id


def cmd_demo(args: argparse.Namespace) -> int:
    import trainpilot

    cfg = _config(args, demo=True)
    run = trainpilot.init(
        project=args.project,
        name=f"{cfg.model}-{cfg.data}",
        config=_asdict(cfg),
        serve=True,
        data_dir=args.data_dir,
        port=args.port,
    )
    print(
        f"trainpilot demo: training run {run.id} ({cfg.model} on {cfg.data}, {cfg.epochs} epochs)\n"
        f"  server:      {run.url}/  (API docs at /docs)\n"
        f"  live stream: curl -N {run.url}/api/stream/metrics\n"
        f"  control:     trainpilot control {run.id} pause --server {run.url}",
        flush=True,
    )
    code = _train(cfg, run)
    if not args.exit:
        print(f"training done; still serving on {run.url}/ (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return code


DEMO_DEFAULTS = {"epochs": 40, "batch_size": 32}


def _config(args: argparse.Namespace, demo: bool = False) -> Any:
    from trainpilot.trainer.config import config_from

    try:
        cfg = config_from(args, DEMO_DEFAULTS if demo else {})
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    return cfg


def _asdict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}


def _train(cfg: Any, run: Any) -> int:
    from trainpilot.trainer.train import Trainer

    try:
        trainer = Trainer(cfg, run)
    except (OSError, ValueError) as exc:
        run.finish("failed")
        raise CLIError(str(exc)) from None
    trainer.start()
    try:
        trainer.join()
    except KeyboardInterrupt:
        print("stopping at the next step (Ctrl-C again to abort)", file=sys.stderr, flush=True)
        trainer.stop()
        trainer.join()
    val = ", ".join(f"{k}={v:.4f}" for k, v in trainer.final_val.items() if k in ("val/loss", "val/acc"))
    if trainer.rank == 0:
        print(f"run {run.id}: {trainer.step} steps; {val or 'no validation yet'}", flush=True)
    return 0


def _client(server: str, token: str | None = None) -> Any:
    import httpx

    return httpx.Client(base_url=server, headers=auth_headers(token or env_token()), timeout=10.0)


def _request(server: str, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
    import httpx

    try:
        with _client(server, token) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach {server}: {exc}") from None
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        message = body.get("error", {}).get("message", response.text[:200]) if isinstance(body, dict) else ""
        raise CLIError(f"{method} {path}: HTTP {response.status_code}: {message}")
    return body


def cmd_runs(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"project": args.project} if args.project else {})}
    runs = _request(args.server, "GET", "/api/runs", params=params)["runs"]
    rows = [["ID", "PROJECT", "NAME", "STATUS", "STEP", "STARTED", "UPDATED"]]
    for r in runs:
        rows.append(
            [
                r["id"],
                r["project"],
                r["name"],
                r["status"],
                "" if r["last_step"] is None else str(r["last_step"]),
                _time(r["created_at"]),
                _time(r["updated_at"]),
            ]
        )
    print_table(rows)
    return 0


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_tail(args: argparse.Namespace) -> int:
    from trainpilot.client.sse import SSEClient

    params = {"run_id": args.run, **({"keys": args.keys} if args.keys else {})}
    url = f"{args.server.rstrip('/')}/api/stream/metrics"
    client = SSEClient(url, params, token=env_token(), after=args.after)
    print(f"tailing run {args.run} on {args.server} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    for event in client:
        print(format_event(event.name, event.data), flush=True)
    return 0


def format_event(name: str, data: Any) -> str:
    if not isinstance(data, dict):
        return f"{name}: {data}"
    body = data.get("data", {})
    step = data.get("step")
    prefix = f"[{data.get('id')}] step {step if step is not None else '-':>6}  {name:<8}"
    if name == "metrics" and isinstance(body, dict):
        values = "  ".join(f"{k}={_num(v)}" for k, v in body.items())
        return f"{prefix} {values}"
    return f"{prefix} {body}"


def _num(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def cmd_control(args: argparse.Namespace) -> int:
    from trainpilot.client.sse import SSEClient

    if args.action == "set_lr" and args.value is None:
        raise CLIError("set_lr needs a value: trainpilot control RUN set_lr 0.01")
    health = _request(args.server, "GET", "/api/runs/" + args.run, token=args.token)
    cursor = health.get("last_event_id") or 0
    body = {"run_id": args.run, "action": args.action, "value": args.value}
    reply = _request(args.server, "POST", "/api/training/control", token=args.token, json=body)
    command_id = reply["command_id"]
    print(f"{args.action} sent to {args.run}: command {command_id}", flush=True)
    if args.wait <= 0:
        return 0
    client = SSEClient(
        f"{args.server.rstrip('/')}/api/stream/metrics",
        {"run_id": args.run, "kinds": "control"},
        token=args.token or env_token(),
        after=min(cursor, command_id - 1),
        read_timeout_s=args.wait,
    )
    timer = threading.Timer(args.wait, client.stop)
    timer.start()
    try:
        for event in client:
            data = event.data.get("data", {}) if isinstance(event.data, dict) else {}
            if data.get("command_id") == command_id:
                detail = f" ({data['reason']})" if data.get("reason") else ""
                print(f"{data.get('status')} at step {data.get('step')}{detail}", flush=True)
                return 0 if data.get("status") == "applied" else 2
    finally:
        timer.cancel()
        client.stop()
    print(
        f"no acknowledgement within {args.wait:g} s (is the run calling wait_if_paused()?)", file=sys.stderr
    )
    return 3
