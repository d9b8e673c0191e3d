"""A disk that fills up under the server: unhealthy and 503 to writes, reads go on, nothing stored
is harmed, and a restart recovers (issue 9, item 7)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tests.conftest import LiveServer, create_run, metrics_batch


def test_a_full_disk_makes_writes_503_and_health_unhealthy_and_a_restart_recovers(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "data").start()
    db = live.data_dir / "trainpilot.db"
    acknowledged = 0
    try:
        with live.client() as client:
            create_run(client, "full")
            assert client.post("/api/runs/full/events", json=metrics_batch(0, 100)).status_code == 200
            acknowledged = 100
            # The database may grow 2 MiB more (the write-ahead log first), then the disk is "full".
            live.fill_disk_at(max(f.stat().st_size for f in live.data_dir.glob("trainpilot.db*")) + 2**21)
            refused = None
            for _ in range(2000):
                response = client.post("/api/runs/full/events", json=metrics_batch(acknowledged, 500))
                if response.status_code != 200:
                    refused = response
                    break
                acknowledged += 500
            assert refused is not None, "the disk never filled up"
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unavailable"
            health = client.get("/api/system/health")
            assert health.status_code == 503 and health.json()["status"] == "unhealthy"
            assert health.json()["store"]["error"]
            # Reads go on, and everything acknowledged is there.
            history = client.get(
                "/api/metrics/history", params={"run_id": "full", "keys": "train/loss", "max_points": 10}
            )
            assert history.json()["series"]["train/loss"]["total"] == acknowledged
            # Still full: refused, not half-stored; or stored whole, where the store's checkpoint thread
            # has since moved the WAL into the database file (below the limit) and the WAL's space is reused.
            again = client.post("/api/runs/full/events", json=metrics_batch(acknowledged, 500))
            assert again.status_code in (200, 503)
            if again.status_code == 200:
                assert again.json()["stored"] == 500
                acknowledged += 500
    finally:
        live.stop()
    assert acknowledged > 1000

    with sqlite3.connect(db) as conn:  # after the refused writes, the file is sound
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    live.start()  # the disk has room again
    try:
        with live.client() as client:
            assert client.get("/api/system/health").json()["status"] == "ok"
            more = client.post("/api/runs/full/events", json=metrics_batch(acknowledged, 500))
            assert more.status_code == 200 and more.json()["stored"] == 500
            series = client.get(
                "/api/metrics/history",
                params={"run_id": "full", "keys": "train/loss", "max_points": 100_000},
            ).json()["series"]["train/loss"]
        assert series["total"] == acknowledged + 500
        assert series["step"] == list(range(acknowledged + 500))  # each point once, none lost
        assert httpx.get(f"{live.url}/api/runs/full", timeout=5).json()["last_step"] == acknowledged + 499
    finally:
        live.stop()
