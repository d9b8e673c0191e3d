"""Commands on a server and its store: `serve`, `export`, `import`, `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from trainpilot.cli.common import CLIError, add_llm_flags, llm_settings
from trainpilot.exceptions import TrainpilotError
from trainpilot.settings import DEFAULT_PORT, Settings

T = TypeVar("T")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the server")
    add_serve_flags(serve)
    add_llm_flags(serve)
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
    p.add_argument(
        "--alert-webhook",
        action="append",
        metavar="URL",
        help="post findings and runs that end failed, stopped or lost here (repeatable; env "
        "TRAINPILOT_ALERT_WEBHOOKS, comma- or space-separated). Slack and Discord webhook URLs get their "
        "own body; a slack+, discord+ or json+ prefix forces one",
    )
    p.add_argument(
        "--alert-severity",
        choices=["warning", "critical"],
        help="the least severe finding that alerts (default warning; env TRAINPILOT_ALERT_SEVERITY)",
    )
    p.add_argument(
        "--public-url",
        help="the dashboard's address as people open it, for links in alerts (env TRAINPILOT_PUBLIC_URL; "
        "default: the listen address)",
    )


def add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store URL (env TRAINPILOT_STORE; default: SQLite in the data dir)")
    p.add_argument("--data-dir", help="data dir of the default SQLite store (default ./trainpilot-data)")


def _with_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    """Run `work` on the store the flags name; problems become one-line errors."""
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


def serve_settings(args: argparse.Namespace) -> Settings:
    """The flags of `serve` over the environment; repeated --alert-webhook flags replace the variable."""
    return Settings.from_env(
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
        alert_webhooks=" ".join(args.alert_webhook) if args.alert_webhook else None,
        alert_severity=args.alert_severity,
        public_url=args.public_url,
        **llm_settings(args),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from trainpilot.server.advisor import check_model, describe
    from trainpilot.server.runner import serve_forever
    from trainpilot.store import redact_url

    settings = serve_settings(args)
    if settings.port == 0:  # any free port, named in the banner (uvicorn would pick one it never tells)
        from trainpilot.server.runner import free_port

        settings = dataclasses.replace(settings, port=free_port(settings.host))
    try:
        settings.check()
        check_model(settings)
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
    if hooks := settings.webhooks:  # by scheme and host only: a webhook's path is its secret
        shown = ", ".join(f"{w.redacted} ({w.format})" for w in hooks)
        print(f"  alerts:      {settings.alert_severity} and above, to {shown}", flush=True)
    if advisor := describe(settings):
        print(f"  advisor:     {advisor}", flush=True)
    serve_forever(settings)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from trainpilot.store import POSTGRES_SCHEMES, redact_url

    url = args.store
    if not url:
        raise CLIError("which store? give --store postgresql://user@host/db (or set TRAINPILOT_STORE)")
    if url.split(":", 1)[0] not in POSTGRES_SCHEMES:
        print(f"nothing to migrate: {redact_url(url)} is not PostgreSQL (SQLite makes its own schema)")
        return 0
    try:
        from trainpilot.store.postgres_migrations import migrate_url

        applied, version = asyncio.run(migrate_url(url))
    except TrainpilotError as exc:
        raise CLIError(str(exc)) from None
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    print(f"{redact_url(url)}: schema at version {version}" + ("" if applied else " (up to date)"))
    return 0
