"""Record the analysis corpus: real runs of the reference trainer, healthy and with injected faults.

    .venv/bin/python corpus/record.py [--seeds 0 1 2] [--cases lr_high healthy ...]

Each case of `cases.json` (the trainer's config overrides, the problem kinds that count as
detecting it, and when the fault begins) is trained for real on CPU for each seed, streamed to an
in-process trainpilot server, and its metrics are written to `runs/<case>-s<seed>.jsonl.gz` as
metrics events (one JSON object per step). `trainpilot.analysis.evaluate` scores the detectors on
them. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from pathlib import Path

import httpx

import trainpilot
from trainpilot.train import Trainer
from trainpilot.trainconfig import TrainConfig

HERE = Path(__file__).resolve().parent
BASE = {"epochs": 5, "batch_size": 32, "tensorboard_dir": None, "progress": False, "system_every_s": 1e9}


def main() -> None:
    cases = json.loads((HERE / "cases.json").read_text())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", nargs="+", default=list(cases))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    out = HERE / "runs"
    out.mkdir(exist_ok=True)
    server_run = None
    for name in args.cases:
        for seed in args.seeds:
            config = {
                **BASE,
                **cases[name]["config"],
                "seed": seed,
                "checkpoint_dir": str(HERE / ".checkpoints"),
            }
            if server_run is None:
                run = server_run = trainpilot.init(
                    project="corpus", name=f"{name}-s{seed}", serve=True, data_dir=str(HERE / ".data")
                )
            else:
                run = trainpilot.init(
                    project="corpus",
                    name=f"{name}-s{seed}",
                    server=server_run.url,
                    data_dir=str(HERE / ".data"),
                )
            started = time.perf_counter()
            trainer = Trainer(TrainConfig(**config), run)
            trainer.fit()
            series = httpx.get(
                f"{run.url}/api/metrics/history", params={"run_id": run.id, "max_points": 100_000}, timeout=60
            ).json()["series"]
            by_step: dict[int, dict[str, float]] = {}
            for key, s in series.items():
                for step, value in zip(s["step"], s["value"], strict=True):
                    by_step.setdefault(step, {})[key] = value
            path = out / f"{name}-s{seed}.jsonl.gz"
            with gzip.open(path, "wt") as f:
                for step, data in sorted(by_step.items()):
                    f.write(json.dumps({"kind": "metrics", "step": step, "data": data}) + "\n")
            val = trainer.final_val.get("val/acc", float("nan"))
            elapsed = time.perf_counter() - started
            print(f"{path.name}: {trainer.step} steps, val/acc {val:.3f}, {elapsed:.1f} s", flush=True)


if __name__ == "__main__":
    main()
