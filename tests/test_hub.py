"""The Hub's per-run state, on a real server: held while a run lives, let go when it ends or is lost."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import wait_until
from trainpilot.server.runner import ServerThread, free_port
from trainpilot.settings import Settings

ENDINGS = ("finished", "failed", "stopped")


def test_a_server_that_saw_many_runs_holds_state_only_for_the_live_ones(tmp_path: Path) -> None:
    """300 runs end (each way), 60 go silent and are marked lost, 10 get a late batch after their
    end: what the Hub and its analysis keep per run drains back to nothing."""
    settings = Settings(port=free_port(), data_dir=str(tmp_path), run_timeout_s=3.0)
    server = ServerThread(settings).start()
    hub = server.hub

    def held() -> dict[str, int]:
        analysis = hub.analysis
        return {
            "heard": len(hub.heard),
            "touched": len(hub.touched),
            "analysed": len(analysis.live),
            "replaying": len(analysis.replaying),
        }

    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for n in range(360):
                run_id = f"run-{n}"
                assert client.post("/api/runs", json={"id": run_id}).status_code == 201
                events: list[dict[str, object]] = [
                    {"seq": s, "step": s, "data": {"train/loss": 1.0 / (s + 1), "grad_norm": "nan"}}
                    for s in range(20)
                ]
                if n < 300:
                    events.append({"kind": "status", "data": {"status": ENDINGS[n % 3]}})
                assert client.post(f"/api/runs/{run_id}/events", json={"events": events}).status_code == 200
            for n in range(10):  # a late retry of an ended run's batch: no end follows to let it go
                assert client.post(f"/api/runs/run-{n}/events", json={"events": []}).status_code == 200
            assert held()["heard"] >= 60
            wait_until(lambda: not any(held().values()), timeout=20, what=f"per-run state to drain: {held()}")
            lost = client.get("/api/runs", params={"status": "lost", "limit": 1000}).json()["runs"]
            assert len(lost) == 60
    finally:
        server.stop()
