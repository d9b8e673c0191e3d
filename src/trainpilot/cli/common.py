"""What every command group of the CLI shares: the one-line error, the --server flag, tables."""

from __future__ import annotations

import argparse
import os

from trainpilot.settings import DEFAULT_PORT

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"


class CLIError(Exception):
    """A problem to report in one line, without a traceback."""


def add_server_flag(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("TRAINPILOT_SERVER", DEFAULT_SERVER)
    p.add_argument("--server", default=default, help="server URL (env TRAINPILOT_SERVER)")


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
