"""Fuzz every endpoint of the OpenAPI schema with schemathesis against a real server: no 5xx.

    .venv/bin/python -m tests.fuzz_api --min-cases 10000     # `make fuzz`

Seeds 0, 1, ... each run every phase at `--max-examples` until `--min-cases` cases were generated
(one run's count grows slower than its `--max-examples`: new seeds reach new cases sooner).

The SSE stream is left out (an endless response cannot be judged per request; its parameters have
their own tests), so is /mcp (not in the schema; the MCP tests drive it with the SDK's client).
The server runs without a token so that the generated requests reach validation instead of a 401.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import LiveServer


def fuzz(url: str, max_examples: int, seed: int = 0) -> tuple[int, int, str]:
    """Run schemathesis; (its exit code, the number of cases it generated, its output)."""
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    command = [
        binary,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--exclude-path",
        "/api/stream/metrics",
        "--seed",
        str(seed),
        "--no-color",
        "--warnings",
        "off",
    ]
    with tempfile.TemporaryDirectory() as scratch:  # its cache and reports stay out of the checkout
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=scratch)
    output = done.stdout + done.stderr
    found = re.search(r"(\d+) generated", output)
    return done.returncode, int(found.group(1)) if found else 0, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-cases", type=int, default=10_000, help="generate at least this many")
    parser.add_argument("--max-examples", type=int, default=600, help="per operation and phase, per seed")
    args = parser.parse_args()
    total, code, seed, output = 0, 0, 0, ""
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp) / "data").start()
        try:
            while total < args.min_cases and code == 0:
                print(
                    f"fuzzing {server.url}: seed {seed}, --max-examples {args.max_examples} ...", flush=True
                )
                code, cases, output = fuzz(server.url, args.max_examples, seed)
                total += cases
                print(f"  {cases} cases ({total} so far), exit code {code}", flush=True)
                seed += 1
        finally:
            server.stop()
    print(output[-3000:])
    verdict = "no server errors" if code == 0 else "FAILURES (see above)"
    print(f"fuzz: {total} generated cases against every endpoint ({seed} seeds), {verdict}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
