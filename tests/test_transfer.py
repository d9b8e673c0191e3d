"""`trainpilot export` / `import`: a run moves between stores with its curves, status and findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from tests.conftest import create_run, in_process, metrics_batch
from tests.test_cli import assert_one_line_error, cli


def snapshot(client: TestClient, run_id: str) -> dict[str, Any]:
    """What a user sees of a run: its record, its loss curve, its findings."""
    run = client.get(f"/api/runs/{run_id}").json()
    loss = client.get("/api/metrics/history", params={"run_id": run_id, "keys": "loss"}).json()
    insights = client.get(f"/api/runs/{run_id}/insights").json()
    series = loss["series"]["loss"]
    return {
        "status": run["status"],
        "last_step": run["last_step"],
        "loss": (series["step"], series["value"], series["total"]),
        "insights": sorted(i["kind"] for i in insights["insights"]),
    }


def test_a_run_exported_and_imported_into_another_store_reads_the_same_and_only_once(tmp_path: Path) -> None:
    # The app in this process on SQLite in each data dir: the files the CLI moves the run between.
    with in_process(tmp_path / "a", store="") as client:
        create_run(client, "moved")
        client.post("/api/runs/moved/events", json=metrics_batch(0, 300)).raise_for_status()
        nan = {"events": [{"seq": 10_000, "kind": "metrics", "step": 300, "data": {"loss": "nan"}}]}
        client.post("/api/runs/moved/events", json=nan).raise_for_status()
        done = {"events": [{"seq": 10_001, "kind": "status", "data": {"status": "finished"}}]}
        client.post("/api/runs/moved/events", json=done).raise_for_status()
        before = snapshot(client, "moved")
    export = tmp_path / "runs.jsonl"
    exported = cli("export", "--data-dir", str(tmp_path / "a"), "-o", str(export))
    assert exported.returncode == 0, exported.stderr
    assert "exported moved" in exported.stderr

    for attempt in range(2):  # the second import finds the run there and stores nothing twice
        imported = cli("import", str(export), "--data-dir", str(tmp_path / "b"))
        assert imported.returncode == 0, imported.stderr
        assert ("skipped moved" if attempt else "imported moved") in imported.stderr
    with in_process(tmp_path / "b", store="") as client:
        after = snapshot(client, "moved")
    assert after == before
    assert before["status"] == "finished" and "nan_inf" in before["insights"]


def test_a_file_that_is_not_an_export_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run": {"id": "x", "project": "p", "name": "n", "config": {}}}\n{"event": 3}\n')
    assert_one_line_error(cli("import", str(bad), "--data-dir", str(tmp_path / "store")))
    assert_one_line_error(cli("export", "--data-dir", str(tmp_path / "empty"), "--run", "nope"))


def test_an_export_edited_into_a_metric_that_is_not_a_number_is_refused_by_line(tmp_path: Path) -> None:
    """Metric values are packed as numbers (store/chunks.py): an import takes what ingest takes, and
    names the line of anything else instead of failing the store's write."""
    run = '{"run": {"id": "x", "project": "p", "name": "n", "config": {}}}\n'
    event = '{"event": {"id": 1, "run_id": "x", "seq": 0, "kind": "metrics", "ts": 1.0, '
    event += '"step": %s, "data": %s}}\n'
    for step, data, field in (
        ("0", '{"loss": "high"}', "line 2.data.loss"),
        ("1.5", '{"loss": 1}', "line 2.step"),
        ("-1", '{"loss": 1}', "line 2.step"),  # ingest's range too
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(run + event % (step, data))
        result = cli("import", str(bad), "--data-dir", str(tmp_path / f"store-{step}"))
        assert_one_line_error(result)
        assert field in result.stderr
