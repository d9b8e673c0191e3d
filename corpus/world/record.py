"""Record the world corpus: real CPU training runs of several frameworks, healthy and faulty.

    corpus/.venv/bin/python -m corpus.world.record                      # every writer that imports
    corpus/.venv/bin/python -m corpus.world.record --writer custom lightning --only lr_high --jobs 2

Each writer module (`w_<writer>.py`) lists its cases and trains one case with its framework,
returning the metrics events as that framework names them. This writes
``runs/<writer>/<run>.jsonl.gz``, computes the label's evidence with `check.py` and updates
``runs/<writer>/manifest.json`` (entries of runs not re-recorded are kept). Seeds are fixed, so a
re-recording gives the same curves up to float and timing noise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `corpus.world` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corpus.world import check, runio
from corpus.world.cases import Case

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
WRITERS = ("reference", "custom", "lightning", "hf", "timm", "keras", "yolo")


def writer_module(writer: str) -> Any:
    return importlib.import_module(f"corpus.world.w_{writer}")


def entry(case: Case, source: str) -> dict[str, Any]:
    return {
        "file": f"{case.name}.jsonl.gz",
        "task": case.task,
        "dataset": case.dataset,
        "model": case.extra.get("model_name", case.model),
        "writer": case.writer,
        "label": case.label,
        "expect": case.expect,
        "onset": case.onset,
        "variant": case.variant,
        "seed": case.seed,
        "config": case.config(),
        "evidence": {},
        "source": source,
        **({"note": case.extra["note"]} if "note" in case.extra else {}),
    }


def record_one(writer: str, index: int) -> dict[str, Any]:
    """Train case `index` of `writer` in a scratch folder; write its run; return its manifest entry."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    module = writer_module(writer)
    case = module.cases()[index]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"tp-{writer}-") as work:
        events = module.record(case, Path(work))
    path = RUNS / writer / f"{case.name}.jsonl.gz"
    runio.write(path, events)
    item = entry(case, f"recorded by corpus/world/w_{writer}.py (corpus/world/record.py)")
    verdict = check.judge(item, runio.read(path))
    item["evidence"] = verdict.evidence
    item["_summary"] = (
        f"{case.name}: {len(events)} steps, {verdict.headline}, {time.perf_counter() - started:.1f} s"
        + ("" if verdict.ok else f"  LABEL NOT SUPPORTED: {verdict.reason}")
    )
    return item


def save_manifest(writer: str, items: list[dict[str, Any]]) -> None:
    path = RUNS / writer / "manifest.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    by_file = {r["file"]: r for r in old}
    by_file.update({r["file"]: r for r in items})
    runs = [by_file[f] for f in sorted(by_file) if (RUNS / writer / f).exists()]
    path.write_text(json.dumps({"writer": writer, "runs": runs}, indent=1) + "\n")


def prune(writer: str) -> None:
    """Delete the run files (and manifest entries) of cases that no longer exist."""
    folder = RUNS / writer
    if not folder.is_dir():
        return
    wanted = {f"{c.name}.jsonl.gz" for c in writer_module(writer).cases()}
    for path in folder.glob("*.jsonl.gz"):
        if path.name not in wanted:
            print(f"{writer}: pruned {path.name}")
            path.unlink()
    save_manifest(writer, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writer", nargs="+", default=list(WRITERS))
    parser.add_argument("--only", nargs="+", default=[], help="record runs whose name contains any of these")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--missing", action="store_true", help="record only runs that have no file yet")
    parser.add_argument(
        "--prune", action="store_true", help="delete runs no longer among the cases, then stop"
    )
    args = parser.parse_args()
    if args.prune:
        for writer in args.writer:
            prune(writer)
        return
    jobs: list[tuple[str, int]] = []
    for writer in args.writer:
        try:
            names = [c.name for c in writer_module(writer).cases()]
        except ImportError as exc:
            print(f"{writer}: skipped, its framework does not import ({exc})", flush=True)
            continue
        if len(set(names)) != len(names):
            raise SystemExit(f"{writer}: two cases share a run name")
        for i, n in enumerate(names):
            if args.only and not any(o in n for o in args.only):
                continue
            if args.missing and (RUNS / writer / f"{n}.jsonl.gz").exists():
                continue
            jobs.append((writer, i))
    print(f"recording {len(jobs)} runs with {args.jobs} jobs", flush=True)
    started = time.perf_counter()
    done: dict[str, list[dict[str, Any]]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(record_one, w, i): (w, i) for w, i in jobs}
        for future in as_completed(futures):
            writer, index = futures[future]
            try:
                item = future.result()
            except Exception as exc:
                print(f"{writer} case {index}: FAILED {type(exc).__name__}: {exc}", flush=True)
                continue
            print(item.pop("_summary"), flush=True)
            done.setdefault(writer, []).append(item)
            save_manifest(writer, done[writer])
    print(
        f"recorded {sum(map(len, done.values()))}/{len(jobs)} runs in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
