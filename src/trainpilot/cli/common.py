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


def add_llm_flags(p: argparse.ArgumentParser) -> None:
    """The local model's flags: a GGUF file run by llama.cpp's runtime (pip install 'trainpilot[llm]')."""
    p.add_argument(
        "--llm-model",
        metavar="PATH.gguf",
        help="answer with this local model (env TRAINPILOT_LLM_MODEL_PATH); TRAINPILOT_LLM_URL wins when set",
    )
    p.add_argument("--llm-threads", type=int, help="its CPU threads (default: half the cores)")
    p.add_argument("--llm-ctx", type=int, help="its context in tokens (default 4096)")
    p.add_argument("--llm-max-tokens", type=int, help="the longest answer in tokens (default 400)")


def llm_settings(args: argparse.Namespace) -> dict[str, object]:
    """The llm flags given, as Settings fields (a model file's relative path made absolute; a packaged
    model's name, or a path that names nothing, as given: the error quotes it)."""
    path = getattr(args, "llm_model", None)
    return {
        "llm_model_path": os.path.abspath(path) if path and os.path.isfile(path) else path,
        "llm_threads": getattr(args, "llm_threads", None),
        "llm_ctx": getattr(args, "llm_ctx", None),
        "llm_max_tokens": getattr(args, "llm_max_tokens", None),
    }


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
