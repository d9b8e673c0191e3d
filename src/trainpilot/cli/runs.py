"""Commands on a server's runs: `ask`, `mcp`, `runs`, `tail`, `control`."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
from typing import Any

from trainpilot.cli.common import CLIError, add_llm_flags, add_server_flag, llm_settings, print_table
from trainpilot.client.rest import ApiClient, env_token, run_path
from trainpilot.client.sse import SSEClient
from trainpilot.events import ACTIONS


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ask = sub.add_parser("ask", help="ask the advisor about a run")
    ask.add_argument("run", help="run id")
    ask.add_argument("question")
    add_server_flag(ask)
    add_llm_flags(ask)
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


def cmd_ask(args: argparse.Namespace) -> int:
    """The server's advisor answers; with --llm-model a local model here answers from the server's
    summary of the run, grounded and checked the same way."""
    api = ApiClient(args.server, env_token(), timeout_s=120, connect_s=5)
    if args.llm_model:
        return _ask_here(api, args)
    for event in api.events("POST", run_path(args.run, "/ask"), json={"question": args.question}):
        data = event.data if isinstance(event.data, dict) else {}
        if event.name == "token":
            print(data.get("text", ""), end="", flush=True)
        elif event.name == "note":
            print("\n\n" + str(data.get("text", "")), end="")
        elif event.name == "done" and data.get("source") == "rules" and data.get("reason"):
            print(f"\n\n({data['reason']})", end="")
        elif event.name == "error":
            print()
            raise CLIError(str(data.get("message")))
    print()
    return 0


def _ask_here(api: ApiClient, args: argparse.Namespace) -> int:
    import asyncio

    from trainpilot.analysis import advice
    from trainpilot.analysis.llm import AdvisorError
    from trainpilot.server.advisor import AdvisorSource
    from trainpilot.settings import Settings

    summary = api.call("GET", run_path(args.run, "/summary"))
    source = AdvisorSource(Settings.from_env(**llm_settings(args)))

    async def answer() -> str:
        print(f"(loading {source.model} ...)", file=sys.stderr, flush=True)
        try:
            said = []
            async for text in (await source.advisor()).stream(summary, args.question):
                said.append(text)
                print(text, end="", flush=True)
            return "".join(said)
        finally:
            await source.close()

    try:
        text = asyncio.run(answer())
    except AdvisorError as exc:
        raise CLIError(str(exc)) from None
    note = advice.check(text, summary)
    print("\n\n" + note if note else "")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from trainpilot.server.mcp import remote

    remote(args.server, args.token).run("stdio")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"project": args.project} if args.project else {})}
    runs = ApiClient(args.server, env_token()).call("GET", "/api/runs", params=params)["runs"]
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


def cmd_tail(args: argparse.Namespace) -> int:
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
    if args.action == "set_lr" and args.value is None:
        raise CLIError("set_lr needs a value: trainpilot control RUN set_lr 0.01")
    token = args.token or env_token()
    api = ApiClient(args.server, token)
    cursor = api.call("GET", run_path(args.run)).get("last_event_id") or 0
    body = {"run_id": args.run, "action": args.action, "value": args.value}
    reply = api.call("POST", "/api/training/control", json=body)
    command_id = reply["command_id"]
    print(f"{args.action} sent to {args.run}: command {command_id}", flush=True)
    if args.wait <= 0:
        return 0
    client = SSEClient(
        f"{api.url}/api/stream/metrics",
        {"run_id": args.run, "kinds": "control"},
        token=token,
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
