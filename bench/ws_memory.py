"""Where a live subscriber's memory goes: the server in this process under `tracemalloc`, N raw
subscribers held by bench/fanout_worker.py's client (case 4's), Python allocations per connection
before and after they connect, by source line, trainpilot's own apart.

    python bench/ws_memory.py [N] [ws|sse]

tracemalloc's own bookkeeping makes RSS here larger than in case 4; the traced bytes are what the
connections' Python objects hold.
"""

from __future__ import annotations

import gc
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

from trainpilot.server.runner import ServerThread, free_port
from trainpilot.settings import Settings

WORKER = Path(__file__).resolve().parent / "fanout_worker.py"
OURS = [tracemalloc.Filter(True, "*/trainpilot/*")]


def per_connection(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> None:
    stats = after.compare_to(before, "lineno")
    print(f"traced per connection: {sum(s.size_diff for s in stats) / n:,.0f} bytes")
    for stat in stats[:15]:
        where = stat.traceback.format()[-1].strip()
        print(f"  {stat.size_diff / n:7,.0f} B  {stat.count_diff / n:5.2f} objects  {where}")
    ours = after.filter_traces(OURS).compare_to(before.filter_traces(OURS), "lineno")
    print(f"of which trainpilot's own code allocated: {sum(s.size_diff for s in ours) / n:,.0f} bytes")
    for stat in ours[:8]:
        print(f"  {stat.size_diff / n:7,.0f} B  {stat.traceback.format()[-1].strip()}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    transport = sys.argv[2] if len(sys.argv) > 2 else "ws"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as folder:
        tracemalloc.start()
        server = ServerThread(Settings(port=free_port(), data_dir=folder, log_level="warning")).start()
        spec = {"id": "r-memory", "project": "bench", "name": "memory", "config": {}}
        httpx.post(server.url + "/api/runs", json=spec, timeout=10).raise_for_status()
        gc.collect()
        before = tracemalloc.take_snapshot()
        command = [sys.executable, str(WORKER), "client", "--port", str(server.settings.port)]
        command += ["--transport", transport, "--subscribers", str(n), "--run-id", "r-memory"]
        client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdin is not None
        print(client.stdout.readline().strip(), flush=True)
        time.sleep(2)  # the last subscriptions settle
        gc.collect()
        after = tracemalloc.take_snapshot()
        per_connection(before, after, n)
        client.stdin.write("quit\n")
        client.stdin.flush()
        client.wait(30)


if __name__ == "__main__":
    main()
