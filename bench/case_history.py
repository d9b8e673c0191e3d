"""Case 5, history: one metric of 10k, 100k and 1M points read back downsampled to 1000 points.

trainpilot: a real `trainpilot serve` on a real SQLite file, filled through `POST /api/runs/{id}/events`
(the fill is timed apart), then restarted for each size so the first `GET /api/metrics/history` is
cold (a fresh process; the OS page cache stays warm, we cannot drop it without root) and repeats
are warm. Every answer is checked: the total the server reports, at most 1000 points, and every
spike and the global minimum kept exactly (spike-preserving).

TensorBoard: the same series written once as an event file with tensorboard's own record writer and
protos (what torch's SummaryWriter writes, 4-byte floats), then loaded in a fresh process by
`EventAccumulator(...).Reload()` + `.Scalars(tag)`: with `size_guidance={"scalars": 0}` (the whole
series) and with the default size guidance (reservoir-sampled; the count is reported).

    python bench/case_history.py [--quick]
    python bench/case_history.py read-tb <dir> <full|default>   # the TensorBoard side, one load
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import plots
from common import save
from served import served

TAG = "train/loss"
MAX_POINTS = 1000
BATCH = 50_000  # trainpilot.wire.MAX_EVENTS_PER_BATCH
SPIKES = 6
WARM_REPEATS = 7
TARGET_WARM_MS = 50.0
TARGET_FACTOR = 10.0


def loss_curve(n: int, seed: int = 10) -> tuple[list[float], dict[int, float]]:
    """A noisy decaying loss with a few spikes far above everything else; returns (values, spikes)."""
    rng = random.Random(seed)
    values = [0.1 + 2.0 * math.exp(-5 * i / n) + abs(rng.gauss(0, 0.03)) for i in range(n)]
    spikes = {rng.randrange(n // 10, n): 5.0 + rng.random() * 5 for _ in range(SPIKES)}
    for step, value in spikes.items():
        values[step] = value
    return values, spikes


def fill(client: httpx.Client, run_id: str, values: list[float]) -> int:
    """POST the series in the biggest batches the server takes; returns how many it stored."""
    client.post("/api/runs", json={"id": run_id, "project": "bench-history"}).raise_for_status()
    stored = 0
    for start in range(0, len(values), BATCH):
        chunk = values[start : start + BATCH]
        events = [
            {"seq": start + i, "step": start + i, "ts": 1.7e9 + start + i, "data": {TAG: v}}
            for i, v in enumerate(chunk)
        ]
        response = client.post(
            f"/api/runs/{run_id}/events",
            content=orjson.dumps({"events": events}),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()
        stored += int(response.json()["stored"])
    return stored


def history(
    client: httpx.Client, run_id: str, max_points: int = MAX_POINTS
) -> tuple[float, int, dict[str, Any]]:
    """One history request: (seconds, response bytes, the series)."""
    params = {"run_id": run_id, "keys": TAG, "max_points": max_points}
    started = time.perf_counter()
    response = client.get("/api/metrics/history", params=params)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, len(response.content), response.json()["series"][TAG]


def check(series: dict[str, Any], values: list[float], spikes: dict[int, float]) -> dict[str, Any]:
    """What the answer kept: the total, the point count, every spike and the global min and max."""
    kept = dict(zip(series["step"], series["value"], strict=True))
    low = min(range(len(values)), key=values.__getitem__)
    return {
        "total": series["total"],
        "returned": len(series["step"]),
        "spikes_kept": sum(kept.get(s) == v for s, v in spikes.items()),
        "max_kept": max(series["value"]) == max(values),
        "min_kept": kept.get(low) == values[low],
    }


def measure_trainpilot(folder: str, sizes: list[int]) -> list[dict[str, Any]]:
    curves = {n: loss_curve(n) for n in sizes}
    rows = []
    with served(folder) as (url, _), httpx.Client(base_url=url, timeout=300) as client:
        for n in sizes:
            started = time.perf_counter()
            stored = fill(client, f"history-{n}", curves[n][0])
            rows.append({"points": n, "stored": stored, "fill_s": time.perf_counter() - started})
    for row in rows:  # a fresh server process per size: its first request is cold
        n = row["points"]
        with served(folder) as (url, _), httpx.Client(base_url=url, timeout=300) as client:
            cold, size, series = history(client, f"history-{n}")
            warm = [history(client, f"history-{n}")[0] for _ in range(WARM_REPEATS)]
            # Requests the server has not answered before (999, 998, ... points): the query itself.
            unseen = [history(client, f"history-{n}", MAX_POINTS - 1 - i)[0] for i in range(WARM_REPEATS)]
        row.update(
            cold_ms=1000 * cold,
            warm_ms=1000 * statistics.median(warm),
            warm_runs_ms=[1000 * w for w in warm],
            unseen_ms=1000 * statistics.median(unseen),
            response_bytes=size,
            **check(series, *curves[n]),
        )
    return rows


def write_event_file(folder: Path, sizes: list[int]) -> float:
    """The longest series once as records, each size's file its prefix; returns the write seconds."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    values = loss_curve(max(sizes))[0]
    started = time.perf_counter()
    whole = folder / "whole.tfevents"
    ends = {}
    with open(whole, "wb") as f:
        writer = RecordWriter(f)
        writer.write(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString())
        for step, value in enumerate(values):
            scalar = summary_pb2.Summary.Value(tag=TAG, simple_value=value)
            summary = summary_pb2.Summary(value=[scalar])
            event = event_pb2.Event(wall_time=1.7e9 + step, step=step, summary=summary)
            writer.write(event.SerializeToString())
            if step + 1 in sizes:
                ends[step + 1] = f.tell()
    seconds = time.perf_counter() - started
    data = whole.read_bytes()
    for n in sizes:
        (folder / str(n)).mkdir()
        (folder / str(n) / "events.out.tfevents.1700000000.bench").write_bytes(data[: ends[n]])
    whole.unlink()
    return seconds


def read_tb(folder: Path, guidance: str) -> dict[str, Any]:
    """One load by the `tensorboard` package's reader in a fresh process (this file, `read-tb`)."""
    command = [sys.executable, __file__, "read-tb", str(folder), guidance]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"tensorboard reader: exit {done.returncode}: {done.stderr[-600:]}")
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def read_tb_child(folder: str, guidance: str) -> None:
    from tensorboard.backend.event_processing import event_accumulator as ea

    size_guidance = {ea.SCALARS: 0} if guidance == "full" else None
    started = time.perf_counter()
    accumulator = ea.EventAccumulator(folder, size_guidance=size_guidance)
    accumulator.Reload()
    points = accumulator.Scalars(TAG)
    seconds = time.perf_counter() - started
    kept = ea.DEFAULT_SIZE_GUIDANCE[ea.SCALARS] if guidance == "default" else 0
    result = {"seconds": seconds, "points": len(points), "reservoir": kept}
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")


def measure_tensorboard(folder: Path, sizes: list[int]) -> tuple[float, dict[int, dict[str, Any]]]:
    write_s = write_event_file(folder, sizes)
    loads = {n: {g: read_tb(folder / str(n), g) for g in ("full", "default")} for n in sizes}
    return write_s, loads


def run(quick: bool) -> Path:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    with tempfile.TemporaryDirectory(prefix="tp-history-") as folder:
        rows = measure_trainpilot(folder, sizes)
        tb_dir = Path(folder) / "tb"
        tb_dir.mkdir()
        tb_write_s, loads = measure_tensorboard(tb_dir, sizes)
    import tensorboard

    for row in rows:
        tb = loads[row["points"]]
        row["tensorboard"] = tb
        print(
            f"  {row['points']:>9,} points: fill {row['fill_s']:6.1f} s ({row['stored']:,} stored); "
            f"trainpilot cold {row['cold_ms']:8.1f} ms, warm {row['warm_ms']:8.1f} ms "
            f"(not seen before {row['unseen_ms']:8.1f} ms), "
            f"{row['response_bytes']:,} B, {row['returned']} points of {row['total']:,}, "
            f"spikes {row['spikes_kept']}/{SPIKES}, min {row['min_kept']}, max {row['max_kept']}; "
            f"tensorboard full {1000 * tb['full']['seconds']:9.1f} ms ({tb['full']['points']:,} points), "
            f"default {1000 * tb['default']['seconds']:9.1f} ms ({tb['default']['points']:,} points)",
            flush=True,
        )
    body = {
        "quick": quick,
        "max_points": MAX_POINTS,
        "spikes": SPIKES,
        "tensorboard_version": tensorboard.__version__,
        "tensorboard_write_s": tb_write_s,
        "rows": rows,
    }
    return save("history", body)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, at the largest size measured (1M in `make bench`)."""
    row = max(rows, key=lambda r: r["points"])
    n = f"{row['points']:,} points"
    complete = row["total"] == row["points"] and row["returned"] <= MAX_POINTS
    extremes = row["spikes_kept"] == SPIKES and row["min_kept"] and row["max_kept"]
    factor = row["tensorboard"]["full"]["seconds"] * 1000 / row["cold_ms"]
    warm_factor = row["tensorboard"]["full"]["seconds"] * 1000 / row["warm_ms"]
    return [
        f"{n} -> {row['returned']} points, every spike and the min and max kept: "
        f"{'met' if complete and extremes else 'NOT met'}",
        f"{n} in {row['warm_ms']:.1f} ms warm, a repeated request (answered from the store's cache "
        f"of downsampled answers) (target <= {TARGET_WARM_MS:.0f} ms): "
        f"{'met' if row['warm_ms'] <= TARGET_WARM_MS else 'NOT met'}",
        f"{n} in {row['unseen_ms']:.1f} ms warm, a request not seen before (the query itself) "
        f"(target <= {TARGET_WARM_MS:.0f} ms): {'met' if row['unseen_ms'] <= TARGET_WARM_MS else 'NOT met'}",
        f"{n}: cold {factor:.0f}x and warm {warm_factor:.0f}x faster than the tensorboard reader loading "
        f"the series (target >= {TARGET_FACTOR:.0f}x, checked cold): "
        f"{'met' if factor >= TARGET_FACTOR else 'NOT met'}",
    ]


def tb_ms(row: dict[str, Any], guidance: str) -> float:
    return 1000 * float(row["tensorboard"][guidance]["seconds"])


def section(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    lines = [
        "## 5. History: one metric, downsampled to 1000 points",
        "",
        f"`GET /api/metrics/history?keys={TAG}&max_points={result['max_points']}` from a real "
        "`trainpilot serve` over its SQLite file, filled through `POST /api/runs/{id}/events` (fill timed "
        "apart). Cold: the first request to a freshly started server process (the OS page cache is not "
        f"dropped); warm: the median of {WARM_REPEATS} repeats of that request (the store keeps a "
        "downsampled answer until its metric gets a new point, so these are cache hits); *unseen*: "
        f"the median of {WARM_REPEATS} requests the warm server has not answered before (`max_points` "
        "999, 998, ...), the query's own cost. Each answer is checked: the total, the "
        f"point count, all {result['spikes']} spikes and the global min and max kept exactly. "
        f"TensorBoard {result['tensorboard_version']}: the same series as one event file (written in "
        f"{result['tensorboard_write_s']:.1f} s for the largest size), loaded in a fresh process by "
        "`EventAccumulator.Reload()` + `.Scalars()`: *full* is `size_guidance={'scalars': 0}` (the "
        "whole series, what a chart of every point needs), *default* is the default size guidance "
        "(reservoir-sampled, not spike-preserving). TensorBoard's optional Rust data server is not "
        "measured here.",
        "",
        "| points | fill s | cold ms | warm ms | unseen ms | bytes | returned / total "
        "| spikes, min, max kept | TB full ms | TB default ms (points) | TB full / cold |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        tb = r["tensorboard"]
        full_ms, default_ms = tb_ms(r, "full"), tb_ms(r, "default")
        kept = f"{r['spikes_kept']}/{result['spikes']}, {'yes' if r['min_kept'] else 'NO'}, "
        kept += "yes" if r["max_kept"] else "NO"
        lines.append(
            f"| {r['points']:,} | {r['fill_s']:.1f} | {r['cold_ms']:,.1f} | {r['warm_ms']:,.1f} "
            f"| {r['unseen_ms']:,.1f} "
            f"| {r['response_bytes']:,} | {r['returned']:,} / {r['total']:,} | {kept} | {full_ms:,.0f} "
            f"| {default_ms:,.0f} ({tb['default']['points']:,}) | {full_ms / r['cold_ms']:,.0f}x |"
        )
    lines += ["", "Targets (issue 10):", ""]
    lines += [f"- {v}" for v in verdicts(rows)]
    link = plots.growth(
        "bench_history_growth",
        "History latency against series length",
        "points in the series",
        "ms to the answer",
        {
            "trainpilot cold": [(r["points"], r["cold_ms"]) for r in rows],
            "trainpilot warm (repeat)": [(r["points"], r["warm_ms"]) for r in rows],
            "trainpilot warm (unseen request)": [(r["points"], r["unseen_ms"]) for r in rows],
            "TensorBoard reader, full": [(r["points"], tb_ms(r, "full")) for r in rows],
            "TensorBoard reader, default": [(r["points"], tb_ms(r, "default")) for r in rows],
        },
    )
    lines += ["", f"![history latency against points (log-log)]({link})", ""]
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["read-tb"]:
        read_tb_child(sys.argv[2], sys.argv[3])
    else:
        run(quick="--quick" in sys.argv)
