"""Commands that train or bring training in: `demo`, `train` (the reference trainer, also under
torchrun) and `watch` (a TensorBoard directory)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
from typing import Any

from trainpilot.cli.common import CLIError, add_llm_flags, add_server_flag, llm_settings
from trainpilot.exceptions import MissingExtra
from trainpilot.settings import DEFAULT_PORT
from trainpilot.trainer.config import TrainConfig, add_flags, config_from


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="start the server, train the default model on digits for real, keep serving until Ctrl-C",
        description="Starts the server in this process on the embedded SQLite store, trains a small CNN "
        "on scikit-learn's digits (about a minute on two CPU cores), prints the server and stream URLs, "
        "and keeps serving after training ends until Ctrl-C. Every `trainpilot train` flag works here.",
    )
    demo.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one if taken)")
    demo.add_argument(
        "--data-dir", default="./trainpilot-data", help="store and spool (default ./trainpilot-data)"
    )
    demo.add_argument("--project", default="demo")
    demo.add_argument("--exit", action="store_true", help="stop the server when training ends")
    add_flags(demo)
    add_llm_flags(demo)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train with the reference trainer, streaming to a server")
    add_server_flag(train)
    train.add_argument("--serve", action="store_true", help="run the server inside this process instead")
    train.add_argument("--data-dir", default="./trainpilot-data", help="spool (and store, with --serve)")
    train.add_argument("--project", default="trainpilot")
    train.add_argument("--name", help="run name (default: the run id)")
    add_flags(train)
    train.set_defaults(func=cmd_train)

    watch = sub.add_parser("watch", help="stream a TensorBoard log directory into trainpilot")
    watch.add_argument("logdir", help="the directory a training program writes event files to")
    add_server_flag(watch)
    watch.add_argument("--project", help="project of the runs (default: the directory's name)")
    watch.add_argument("--data-dir", default="./trainpilot-data", help="spool and watch state")
    watch.add_argument("--token", default=os.environ.get("TRAINPILOT_TOKEN"))
    watch.add_argument("--poll", type=float, default=1.0, help="seconds between reads (default 1)")
    watch.add_argument("--once", action="store_true", help="read what is there, send it, exit")
    watch.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    from trainpilot.tensorboard.tailer import watch

    try:
        return watch(
            args.logdir,
            server=args.server,
            project=args.project,
            data_dir=args.data_dir,
            token=args.token,
            poll_s=args.poll,
            once=args.once,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    """Also under torchrun, on every rank: `torchrun --nproc-per-node 2 -m trainpilot.cli train ...`."""
    import trainpilot
    from trainpilot.trainer.train import join_process_group, leave_process_group

    cfg = _config(args)
    join_process_group(cfg.device)
    try:
        try:
            run = trainpilot.init(
                project=args.project,
                name=args.name,
                config=_asdict(cfg),
                server=args.server,
                serve=args.serve,
                data_dir=args.data_dir,
                run_id=_checkpoint_run_id(cfg.resume) if cfg.resume else None,
            )
        except RuntimeError as exc:  # e.g. --serve under torchrun
            raise CLIError(str(exc)) from None
        return _train(cfg, run)
    finally:
        leave_process_group()


def _checkpoint_run_id(path: str) -> str:
    """A resumed training continues its run: same id, so its curves go on where they stopped."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise CLIError(f"cannot read checkpoint {path}: {exc}") from None
    run_id: str = state["run_id"]
    return run_id


def cmd_demo(args: argparse.Namespace) -> int:
    import trainpilot

    cfg = _config(args, demo=True)
    for name, value in llm_settings(args).items():  # the embedded server reads its settings from these
        if value is not None:
            os.environ[f"TRAINPILOT_{name.upper()}"] = str(value)
    if args.llm_model:
        from trainpilot.exceptions import TrainpilotError
        from trainpilot.server.advisor import check_model
        from trainpilot.settings import Settings

        try:
            check_model(Settings.from_env().check())
        except TrainpilotError as exc:
            raise CLIError(str(exc)) from None
    run = trainpilot.init(
        project=args.project,
        name=f"{cfg.model}-{cfg.data}",
        config=_asdict(cfg),
        serve=True,
        data_dir=args.data_dir,
        port=args.port,
    )
    print(
        f"trainpilot demo: training run {run.id} ({cfg.model} on {cfg.data}, {cfg.epochs} epochs)\n"
        f"  server:      {run.url}/  (API docs at /docs)\n"
        f"  live stream: curl -N {run.url}/api/stream/metrics\n"
        f"  control:     trainpilot control {run.id} pause --server {run.url}\n"
        f"  advisor:     trainpilot ask {run.id} 'what should I change?' --server {run.url}"
        + ("" if args.llm_model else "  (rules only; --llm-model PATH.gguf for a local model)"),
        flush=True,
    )
    code = _train(cfg, run)
    if not args.exit:
        print(f"training done; still serving on {run.url}/ (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return code


DEMO_DEFAULTS = {"epochs": 40, "batch_size": 32}


def _config(args: argparse.Namespace, demo: bool = False) -> TrainConfig:
    try:
        cfg = config_from(args, DEMO_DEFAULTS if demo else {})
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    return cfg


def _asdict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}


def _train(cfg: TrainConfig, run: Any) -> int:
    try:
        from trainpilot.trainer.train import Trainer

        trainer = Trainer(cfg, run)
    except (OSError, ValueError, MissingExtra) as exc:
        run.finish("failed")
        raise CLIError(str(exc)) from None
    trainer.start()
    try:
        trainer.join()
    except KeyboardInterrupt:
        print("stopping at the next step (Ctrl-C again to abort)", file=sys.stderr, flush=True)
        trainer.stop()
        trainer.join()
    val = ", ".join(f"{k}={v:.4f}" for k, v in trainer.final_val.items() if k in ("val/loss", "val/acc"))
    if trainer.rank == 0:
        print(f"run {run.id}: {trainer.step} steps; {val or 'no validation yet'}", flush=True)
    return 0
