"""Case 3's peer: an MLflow tracking server on SQLite, as `mlflow server` starts it, fed the same
points through its REST `log-batch` (at most 1,000 metrics a request), counted in its database.

MLflow runs in its own virtual environment (bench/peers.py), offline, on a free port.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import httpx
import peers
from served import free_port

MAX_METRICS_PER_REQUEST = 1000  # MLflow's own limit for log-batch


@contextlib.contextmanager
def served(folder: str) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """Yield (url, database path, process) once `mlflow server` answers; RuntimeError if it cannot."""
    python, why = peers.python_for("mlflow")
    if python is None:
        raise RuntimeError(why)
    port = free_port()
    db = os.path.join(folder, "mlflow.db")
    command = [
        python,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        os.path.join(folder, "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, **peers.env_for("mlflow", folder)}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # its database migrations take a while on first start
            if process.poll() is not None:
                assert process.stderr is not None
                raise RuntimeError(f"mlflow server exited: {process.stderr.read().decode()[-400:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("mlflow server did not answer within 2 minutes")
        yield url, db, process
    finally:
        process.terminate()
        process.wait(20)


def create_runs(url: str, count: int, name: str) -> list[str]:
    with httpx.Client(base_url=url + "/api/2.0/mlflow", timeout=30) as client:
        created = client.post("/experiments/create", json={"name": name})
        created.raise_for_status()
        experiment = created.json()["experiment_id"]
        runs = []
        for _ in range(count):
            answer = client.post("/runs/create", json={"experiment_id": experiment})
            answer.raise_for_status()
            runs.append(answer.json()["run"]["info"]["run_id"])
    return runs


def stored_points(db: str, run_ids: list[str]) -> int:
    """Metric values of these runs found in MLflow's database file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        marks = ",".join("?" * len(run_ids))
        sql = f"SELECT count(*) FROM metrics WHERE run_uuid IN ({marks})"
        return int(conn.execute(sql, run_ids).fetchone()[0])
