"""PyTorch Lightning: a Logger for what `self.log` records, and a Callback that obeys the run's commands.

    from trainpilot.integrations.lightning import TrainpilotCallback, TrainpilotLogger

    trainer = L.Trainer(logger=TrainpilotLogger(project="cifar"), callbacks=[TrainpilotCallback()])

The Logger alone streams (rank zero only, as Lightning's Logger API wants); the Callback makes the run
controllable: at the end of every training batch, on every rank, pause blocks, stop sets
`trainer.should_stop`, checkpoint calls `trainer.save_checkpoint`, set_lr sets every optimizer's param
groups and holds them over the schedulers. Under the DDP strategy the ranks share one run, whose id
rank 0 broadcasts in `setup`, and each command is applied on all of them at the same batch.
"""

from __future__ import annotations

import os
import secrets
from argparse import Namespace
from typing import Any

from trainpilot.extras import extra
from trainpilot.integrations.steering import Steering, jsonable, pin_torch_lr, scalars, start, torch_lrs
from trainpilot.sdk.run import Run

with extra("lightning", "trainpilot.integrations.lightning"):
    import lightning.pytorch as pl
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.utilities import rank_zero_only


class TrainpilotLogger(Logger):
    """Lightning's Logger API on a trainpilot run: `name` is the project, `version` the run id.

    `init_kwargs` go to `trainpilot.init` (server=, serve=, token=, data_dir=...); or pass `run=`.
    """

    def __init__(
        self,
        project: str = "default",
        name: str | None = None,
        *,
        run: Run | None = None,
        save_dir: str | None = None,
        config: dict[str, Any] | None = None,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        self._project = project
        self._run_name = name
        self._run = run
        self._save_dir = save_dir
        self._init_kwargs = init_kwargs
        # known before the run exists: Lightning asks for it to name checkpoint folders
        self._run_id = (
            run.id if run is not None else init_kwargs.pop("run_id", None) or f"r-{secrets.token_hex(4)}"
        )
        self._config = jsonable(dict(config or {}))
        self._told: dict[str, Any] = dict(self._config)  # hyperparameters the run already has
        self._finish_at_end = False  # a run passed in is the user's to finish

    @property
    def name(self) -> str:
        return self._project

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The trainpilot run (rank zero; other ranks get Lightning's dummy). Lightning asks for it
        before any hook sees the module, so the run is made with the `config=` given here; the
        hyperparameters Lightning logs later follow as a ``log`` event."""
        if self._run is None:
            self._run, _ = start(None, self._project, self._run_name, self._config, self._init_kwargs_for())
            self._finish_at_end = True
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        values = jsonable(vars(params) if isinstance(params, Namespace) else dict(params or {}))
        run = self.experiment
        new = {k: v for k, v in values.items() if self._told.get(k, object()) != v}
        if new:
            self._told.update(new)
            run.log_event("log", {"text": f"hyperparameters: {', '.join(sorted(new))}", "hparams": new})

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = scalars(metrics)
        if values:
            self.experiment.log(values, step=step)

    @rank_zero_only
    def log_image(
        self, key: str, images: list[Any], step: int | None = None, caption: list[str] | None = None
    ) -> None:
        """Images (tensors, arrays, PIL images, PNG bytes), as `WandbLogger.log_image` takes them."""
        for index, image in enumerate(images):
            name = key if len(images) == 1 else f"{key}/{index}"
            self.experiment.log_image(name, image, step=step, caption=caption[index] if caption else None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._finish_at_end and self._run is not None:
            self._run.finish("failed" if status == "failed" else None)

    def begin(self, run_id: str, rank_zero: bool) -> tuple[Run, bool]:
        """The Callback's run on this rank: rank zero's is this Logger's; another rank's is a new Run
        with the same id (`run_id`, broadcast by the Callback), which the Callback finishes."""
        if rank_zero:
            return self.experiment, False
        self._run_id = run_id
        return start(None, self._project, self._run_name, {}, self._init_kwargs_for())

    def _init_kwargs_for(self) -> dict[str, Any]:
        return {**self._init_kwargs, "run_id": self._run_id}


class TrainpilotCallback(pl.Callback):
    """The run's commands, applied at the end of every training batch (on every rank under DDP).

    With a `TrainpilotLogger` in the Trainer it controls that Logger's run; without one it makes its
    own from `project`, `name` and `init_kwargs` (or uses `run=`), and logs the lr and system load.
    Checkpoints go to `checkpoint_dir`, else the ModelCheckpoint's folder, else
    ``<default_root_dir>/checkpoints``.
    """

    def __init__(
        self,
        project: str = "default",
        name: str | None = None,
        *,
        run: Run | None = None,
        checkpoint_dir: str | None = None,
        system_every_s: float = 10.0,
        **init_kwargs: Any,
    ) -> None:
        self._project = project
        self._run_name = name
        self._run = run
        self._checkpoint_dir = checkpoint_dir
        self._system_every_s = system_every_s
        self._init_kwargs = init_kwargs
        self._run_id = ""
        self.steering: Steering | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        logger = _our_logger(trainer)
        planned = (
            logger.version
            if logger is not None
            else (self._run.id if self._run is not None else self._init_kwargs.get("run_id"))
        )
        # every rank's run is rank 0's: a collective, which every rank reaches here
        self._run_id = trainer.strategy.broadcast(planned or f"r-{secrets.token_hex(4)}", src=0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _our_logger(trainer)
        if logger is not None:
            run, owned = logger.begin(self._run_id, trainer.is_global_zero)
            logger.log_hyperparams(_config(trainer, pl_module))  # rank zero; Lightning's own follow
        else:
            config = _config(trainer, pl_module)
            kwargs = {**self._init_kwargs, "run_id": self._run_id}
            run, owned = start(self._run, self._project, self._run_name, config, kwargs)

        def set_lr(lr: float) -> None:
            schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
            pin_torch_lr(trainer.optimizers, schedulers, lr)

        self.steering = Steering(
            run,
            set_lr=set_lr,
            checkpoint_path=lambda: self._checkpoint_path(trainer),
            save=trainer.save_checkpoint,
            owned=owned,
            system_every_s=self._system_every_s,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.steering is None:
            return
        step = _logging_step(trainer)
        if self.steering.boundary(step):
            trainer.should_stop = True
        self.steering.run.log(torch_lrs(trainer.optimizers), step=step)  # a no-op on ranks other than 0

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.steering is not None:
            self.steering.end(failed=not isinstance(exception, KeyboardInterrupt))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.steering is not None:
            self.steering.end()

    def _checkpoint_path(self, trainer: pl.Trainer) -> str:
        """Where `trainer.save_checkpoint` writes: the same on every rank (the step and the folder are)."""
        folder = self._checkpoint_dir or getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = folder or os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(folder, f"trainpilot-step{trainer.global_step}.ckpt")


def _logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning hands its loggers for this batch, so the lr lines up with `self.log`'s values
    (`global_step` is already past it here, and lags it under gradient accumulation)."""
    step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    return step if isinstance(step, int) else trainer.global_step


def _our_logger(trainer: pl.Trainer) -> TrainpilotLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TrainpilotLogger)), None)


def _config(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """What `_log_hyperparams` would log (the module's and the datamodule's hparams) and the Trainer's
    own settings, so the run is made with its config rather than told it later."""
    config: dict[str, Any] = dict(pl_module.hparams_initial)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        config.update(getattr(datamodule, "hparams_initial", {}) or {})
    config["trainer"] = {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
    }
    return config
