"""The analysis engine: on real training runs of the reference trainer, live on the server and offline."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import trainpilot
from tests.conftest import LiveServer, create_run, wait_until
from trainpilot.analysis import Analyzer, analyze_events
from trainpilot.analysis.names import role
from trainpilot.events import Event
from trainpilot.sdk.run import Run
from trainpilot.server.runner import free_port
from trainpilot.trainer.config import TrainConfig
from trainpilot.trainer.train import Trainer


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("loss", (None, "loss")),
        ("train/loss", ("train", "loss")),
        ("train_loss", ("train", "loss")),
        ("Loss/train", ("train", "loss")),
        ("train/epoch_loss", ("train", "loss")),
        ("val_loss", ("val", "loss")),
        ("validation/epoch_loss", ("val", "loss")),
        ("eval/loss", ("val", "loss")),
        ("Accuracy/val", ("val", "acc")),
        ("val/acc", ("val", "acc")),
        ("lr-SGD", (None, "lr")),
        ("learning_rate", (None, "lr")),
        ("metrics/precision", (None, None)),
        ("train/box_loss", ("train", "loss")),  # YOLO: a component of the loss
        ("val/dfl_loss", ("val", "loss")),
        ("lr/pg0", (None, "lr")),
        ("metrics/mAP50(B)", (None, None)),
        ("train_loss_step", ("train", "loss")),  # Lightning
        ("train_loss_epoch", ("train", "loss")),
        ("lr-Adam", (None, "lr")),
        ("lr-Adam-momentum", (None, None)),
        ("train/learning_rate", ("train", "lr")),  # Hugging Face
        ("train/grad_norm", ("train", "grad_norm")),
        ("eval/accuracy", ("val", "acc")),
        ("eval_top1", ("val", "acc")),  # timm
        ("eval_top5", ("val", None)),
        ("loss_cls", (None, "loss")),  # mmdetection
        ("total_loss", (None, "loss")),  # detectron2
        ("loss_scale", (None, None)),  # AMP's scaler, not a loss
        ("epoch_learning_rate", (None, "lr")),  # Keras 3
        ("sparse_categorical_accuracy", (None, "acc")),
        ("samples_per_sec", (None, "throughput")),
        ("data_time", (None, "data_time")),  # detectron2, mmdetection
        ("time/data", (None, "data_time")),
        ("step_time_s", (None, "step_time")),
        ("grad_norm/layer/conv1.weight", (None, None)),
    ],
)
def test_metric_names_are_matched_whoever_wrote_them(
    name: str, expected: tuple[str | None, str | None]
) -> None:
    assert role(name)[:2] == expected


def test_a_busy_machine_is_no_input_bottleneck_but_a_loader_that_dominates_is() -> None:
    """Where data time is logged, the share of the step spent waiting for data decides."""

    def pace(step: int, slow_loader: bool) -> dict[str, float]:
        late = step > 100
        data = 0.03 if slow_loader and late else 0.001
        compute = 0.02 if slow_loader or not late else 0.06  # another job triples the compute time
        return {"data_time_s": data, "step_time_s": data + compute}

    busy = [{"kind": "metrics", "step": s, "data": pace(s, False)} for s in range(300)]
    assert [f.kind for f in analyze_events(busy)] == []
    slow = [{"kind": "metrics", "step": s, "data": pace(s, True)} for s in range(300)]
    (found,) = analyze_events(slow)
    assert found.kind == "input_bottleneck" and 100 < found.step <= 130
    assert found.evidence["share"] == pytest.approx(0.6)
    without_data_time = [
        {"kind": "metrics", "step": s, "data": {"step_time_s": 0.01 * (1 + (s > 100))}} for s in range(300)
    ]
    assert [f.kind for f in analyze_events(without_data_time)] == ["input_bottleneck"]


def test_loss_components_are_told_from_the_total() -> None:
    assert role("train/box_loss").component and role("loss_cls").component
    assert not role("train/loss").component and not role("total_loss").component
    assert role("val/box_loss").base == role("train/box_loss").base == "box_loss"


def test_yolo_style_runs_pair_each_val_loss_with_its_own_train_loss() -> None:
    """Components at different scales: val/cls_loss is compared with train/cls_loss, not the smallest."""
    events = []
    for step in range(0, 600):
        data: dict[str, float] = {
            "train/box_loss": 1.6 - step / 1000,
            "train/cls_loss": 3.0 - step / 400,
            "train/dfl_loss": 0.2 - step / 10_000,
            "lr/pg0": 0.01,
        }
        if step % 60 == 59:
            data.update({"val/box_loss": 1.6 - step / 900, "val/cls_loss": 3.0 - step / 380})
        events.append({"step": step, "data": data})
    kinds = {f.kind for f in analyze_events(events)}
    assert not kinds & {"overfitting", "stuck_at_chance", "plateau", "bad_initial_loss"}, kinds


@pytest.fixture
def server_run(tmp_path: Path) -> Iterator[Any]:
    runs: list[Run] = []
    port = free_port()

    def start(**config: Any) -> tuple[Run, Trainer]:
        first = not runs
        url = f"http://127.0.0.1:{port}"
        run = trainpilot.init(
            project="analysis",
            serve=first,
            port=port if first else None,
            server=None if first else url,
            data_dir=str(tmp_path / "data"),
        )
        runs.append(run)
        base: dict[str, Any] = {
            "epochs": 4,
            "batch_size": 32,
            "tensorboard_dir": None,
            "progress": False,
            "checkpoint_dir": str(tmp_path / "ck"),
        }
        base.update(config)
        return run, Trainer(TrainConfig(**base), run)

    yield start
    for run in runs:
        run.finish()
    runs[0]._sender.transport.server.stop()  # the server init(serve=True) started


def insights(run: Run) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{run.url}/api/runs/{run.id}/insights").json()["insights"]
    return found


def test_a_healthy_run_raises_nothing_serious_and_a_far_too_high_lr_is_flagged_early(server_run: Any) -> None:
    healthy, trainer = server_run()
    trainer.fit()
    assert trainer.final_val["val/acc"] > 0.9
    assert [i for i in insights(healthy) if i["severity"] != "info"] == []

    wild, trainer = server_run(lr=20.0)
    trainer.fit()
    found = {i["kind"]: i for i in insights(wild)}
    assert found["lr_too_high"]["severity"] == "critical" and found["lr_too_high"]["step"] <= 40
    assert found["lr_too_high"]["evidence"]["lr"] > 1 and "lower" in found["lr_too_high"]["suggestion"]
    assert "divergence" not in found and "loss_spike" not in found  # one cause, one finding


def test_a_run_that_learns_nothing_for_a_tiny_learning_rate_is_told_so_once(server_run: Any) -> None:
    """Its loss stays at ln(10), its accuracy at chance: one cause, the learning rate, said once."""
    run, trainer = server_run(lr=1e-6, warmup_steps=0, epochs=5)
    trainer.fit()
    found = {i["kind"]: i for i in insights(run)}
    assert found["lr_too_low"]["severity"] == "warning"
    assert found["lr_too_low"]["evidence"]["lr"] <= 1e-6  # the cosine schedule has begun to decay it
    assert "stuck_at_chance" not in found  # the lr explains it (an earlier plateau hint may stand)


def test_live_and_offline_analysis_agree_and_feeding_order_does_not_matter(server_run: Any) -> None:
    run, trainer = server_run(lr=20.0, epochs=2)
    trainer.fit()
    series = httpx.get(
        f"{run.url}/api/metrics/history", params={"run_id": run.id, "max_points": 100000}
    ).json()
    by_step: dict[int, dict[str, float]] = {}
    for key, s in series["series"].items():
        for step, value in zip(s["step"], s["value"], strict=True):
            by_step.setdefault(step, {})[key] = value
    events = [{"kind": "metrics", "step": step, "data": data} for step, data in sorted(by_step.items())]
    # The trainer logs a step's metrics in more than one call, so findings of one step may come in
    # another order live; the same findings at the same steps is what must hold.
    offline = sorted((f.step, f.kind) for f in analyze_events(events))
    live = sorted((i["step"], i["kind"]) for i in insights(run))
    assert offline == live  # the server was fed batch by batch, offline point by point
    stored = [Event(i + 1, "r", i, "metrics", 0.0, e["step"], e["data"]) for i, e in enumerate(events)]
    one_batch = sorted((e.step, e.data["kind"]) for e in Analyzer().observe(stored))
    assert one_batch == offline


def test_analyze_reads_the_nan_and_infinity_literals_pythons_json_writes(tmp_path: Path) -> None:
    losses: list[object] = [2.3 - 0.01 * i for i in range(40)]
    losses[30] = float("nan")
    events = [
        {"kind": "metrics", "step": i, "data": {"train/loss": v, "note": "x"}} for i, v in enumerate(losses)
    ]
    events[35]["data"]["grad_norm"] = float("inf")
    events[36]["data"]["grad_norm"] = (
        "-inf"  # the wire's marker, as `trainpilot export` and the corpus write it
    )
    (tmp_path / "run.json").write_text(json.dumps({"events": events}))  # NaN, Infinity: not strict JSON
    (tmp_path / "run.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    assert "NaN" in (tmp_path / "run.json").read_text()
    for source in ("run.json", "run.jsonl"):
        result = subprocess.run(
            [sys.executable, "-m", "trainpilot.cli", "analyze", str(tmp_path / source), "--json"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        flagged = [
            (f["step"], f["evidence"]["metrics"]) for f in json.loads(result.stdout) if f["kind"] == "nan_inf"
        ]
        assert flagged == [(30, ["train/loss"]), (35, ["grad_norm"])], (source, flagged)


def test_analyze_reads_a_json_file_and_a_tensorboard_directory(tmp_path: Path) -> None:
    losses = [2.3 * 0.97**i for i in range(60)] + [2.3 * 5 * 1.1**i for i in range(30)]
    events = [
        {"kind": "metrics", "step": i, "data": {"Loss/train": v, "lr": 0.5}} for i, v in enumerate(losses)
    ]
    (tmp_path / "run.json").write_text(json.dumps({"events": events}))
    (tmp_path / "run.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    script = f"""
from torch.utils.tensorboard import SummaryWriter
with SummaryWriter({str(tmp_path / "tb" / "exp1")!r}) as w:
    for i, v in enumerate({losses!r}):
        w.add_scalar("train_loss", v, i)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    for source in ("run.json", "run.jsonl", "tb"):
        result = subprocess.run(
            [sys.executable, "-m", "trainpilot.cli", "analyze", str(tmp_path / source), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        found = json.loads(result.stdout)
        kinds = {f["kind"] for f in found}
        assert kinds & {"divergence", "lr_too_high"}, (source, found)  # lr_too_high: the lr is logged
        assert set(found[0]) >= {"kind", "severity", "step", "evidence", "suggestion"}
    table = subprocess.run(
        [sys.executable, "-m", "trainpilot.cli", "analyze", str(tmp_path / "run.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ("lr_too_high" in table or "divergence" in table) and "critical" in table
    missing = subprocess.run(
        [sys.executable, "-m", "trainpilot.cli", "analyze", "no-such-run"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "--server" in missing.stderr


def restart_series(start: int, stop: int) -> list[dict[str, Any]]:
    """A loss that falls, then from step 150 climbs into a divergence; NaN gradient norms at 50 and 250."""
    events: list[dict[str, Any]] = []
    for step in range(start, stop):
        loss = 2.0 * 0.99**step if step < 150 else 2.0 * 0.99**149 * 1.04 ** (step - 149)
        grad: float | str = "nan" if step in (50, 250) else 1.0
        events.append({"seq": step, "step": step, "data": {"train/loss": loss, "lr": 0.1, "grad_norm": grad}})
    return events


def stream(client: httpx.Client, run_id: str, start: int, stop: int) -> None:
    for first in range(start, stop, 10):
        batch = {"events": restart_series(first, min(first + 10, stop))}
        assert client.post(f"/api/runs/{run_id}/events", json=batch).status_code == 200


def findings_of(url: str, run_id: str, expected: int) -> list[tuple[str, int, int]]:
    """The run's findings as (kind, step, start_step), once the server has stored `expected` of them."""

    def read() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{url}/api/runs/{run_id}/insights").json()["insights"]
        return found

    with contextlib.suppress(AssertionError):
        wait_until(lambda: len(read()) >= expected, timeout=10, what="the findings")
    time.sleep(0.5)  # time for a finding too many to arrive, too
    return sorted((i["kind"], i["step"], i["start_step"]) for i in read())


def reference_findings() -> list[tuple[str, int, int]]:
    """What a server that never restarted finds: the offline analysis of the same points."""
    series = restart_series(0, 300)
    for event in series:
        event["data"] = {k: float(v) for k, v in event["data"].items()}
    return sorted((f.kind, f.step or 0, f.start_step or 0) for f in analyze_events(series))


def findings_through_a_restart(
    tmp_path: Path, at: int, while_down: Callable[[], None]
) -> list[tuple[str, int, int]]:
    """Stream the series to a server, kill it with -9 after step `at - 1`, call `while_down`, start it
    again on the same data and stream the rest: the findings it then holds."""
    live = LiveServer(tmp_path / "data").start()
    try:
        with live.client() as client:
            create_run(client, "restarted")
            stream(client, "restarted", 0, at)
        live.stop(kill=True)
        while_down()
        live.start()
        with live.client() as client:
            stream(client, "restarted", at, 300)
        return findings_of(live.url, "restarted", len(reference_findings()))
    finally:
        live.stop()


def test_a_server_restart_mid_run_neither_repeats_nor_misses_a_finding(tmp_path: Path) -> None:
    """Killed at step 170, after a one-shot finding (NaN at 50) and while the loss has been climbing
    for 20 steps, the server rebuilds the run's analysis from the store: the divergence that started
    before the restart is found where it would have been, and the second NaN is not reported again."""
    expected = reference_findings()
    assert {"nan_inf", "divergence"} <= {kind for kind, _, _ in expected}
    assert findings_through_a_restart(tmp_path, 171, lambda: None) == expected


def test_a_finding_whose_insight_a_crash_lost_is_raised_once_after_the_restart(tmp_path: Path) -> None:
    """The server died after storing the batch that diverged but before storing its insights: the
    rebuild finds what the stored history implies and the store does not hold, and raises it."""

    def lose_the_divergence() -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "trainpilot.db")) as db, db:
            found = "kind = 'insight' AND data ->> 'kind' IN ('divergence', 'lr_too_high')"
            assert db.execute(f"DELETE FROM events WHERE {found}").rowcount == 1  # one cause, one finding

    assert findings_through_a_restart(tmp_path, 200, lose_the_divergence) == reference_findings()
