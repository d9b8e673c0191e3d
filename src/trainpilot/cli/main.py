"""The `trainpilot` command: the parser and `main`; each command group lives in a module of its own.

trainpilot serve [--host H] [--port P] [--data-dir D]     run the server, print its URL     (cli.serve)
trainpilot export | import                                move runs between stores          (cli.serve)
trainpilot migrate --store postgresql://...               create or upgrade a PostgreSQL store's schema
trainpilot demo                                           server + a real training run; Ctrl-C ends it
trainpilot train [--data digits] [--model cnn] ...        the reference trainer (cli.training)
trainpilot watch LOGDIR                                   stream a TensorBoard directory's scalars
trainpilot analyze SOURCE [--json]                        find training problems offline (cli.analyze)
trainpilot ask RUN "QUESTION"                             ask the advisor about a run       (cli.runs)
trainpilot mcp                                            an MCP server on stdio, for assistants
trainpilot runs                                           a table of runs
trainpilot tail RUN                                       live metrics, resuming after reconnects
trainpilot control RUN ACTION [VALUE]                     pause | resume | stop | checkpoint | set_lr

Heavy imports (torch, fastapi, uvicorn, tensorboard, httpx) wait inside the commands, so `--help`
and a table of runs start fast.
"""

from __future__ import annotations

import argparse
import sys

from trainpilot.cli import analyze, runs, serve, training
from trainpilot.cli.common import CLIError
from trainpilot.exceptions import MissingExtra, TransportError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except (CLIError, TransportError, MissingExtra) as exc:  # TransportError: a call to the server failed
        print(f"trainpilot: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainpilot", description="Observe, control and explain training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serve, training, analyze, runs):
        group.add_commands(sub)
    return parser
