"""Writer ``lightning``: real PyTorch Lightning, its `TensorBoardLogger` and `LearningRateMonitor`.

The module logs as the Lightning docs show: ``self.log("train_loss", ..., on_step=True,
on_epoch=True)`` (so ``train_loss_step`` and ``train_loss_epoch``), ``val_loss``, ``val_acc`` (or
``val_iou``, ``val_pixel_error``); the monitor adds ``lr-SGD``/``lr-Adam``; Lightning adds
``epoch`` and the logger ``hp_metric``. ``log_every_n_steps`` varies over runs (1 to 50, the
default). Some runs log gradient norms with Lightning's own `grad_norm` utility
(``grad_2.0_norm_total``), as its docs suggest; per-class accuracy only in
the rare-class runs. A forgotten ``zero_grad`` is an overridden ``optimizer_zero_grad`` that does
nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm

from corpus.world import loop, pipeline, runio, tasks
from corpus.world.cases import Case, faulty, harmless, healthy
from corpus.world.data import Data, make

WRITER = "lightning"
VAL_NAME = {"classification": "acc", "segmentation": "iou", "keypoints": "pixel_error"}


class Module(pl.LightningModule):
    def __init__(self, case: Case, data: Data, total_steps: int) -> None:
        super().__init__()
        self.save_hyperparameters(case.config())
        self.case, self.data, self.total_steps = case, data, total_steps
        self.net = loop.model_for(case, data)
        self.opts = {"label_smoothing": case.label_smoothing, "wrong_loss": case.fault.get("wrong_loss")}
        self.outs: list[tuple[torch.Tensor, Any]] = []
        self.bad = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss, _ = tasks.loss(self.data.task, out, y, self.opts)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        if self.data.task == "classification":
            self.log("train_acc", tasks.batch_acc(out, y), on_step=True, on_epoch=True)
        self.bad = 0 if torch.isfinite(loss) else self.bad + 1
        if self.bad >= loop.NAN_PATIENCE:
            self.trainer.should_stop = True  # the user stops a run whose loss is NaN
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.outs.append(batch)

    def on_validation_epoch_end(self) -> None:
        m = tasks.evaluate(self.data.task, self.net, self.outs, self.data.num_classes)
        self.outs = []
        self.log("val_loss", m["loss"])
        self.log(f"val_{VAL_NAME[self.data.task]}", m[VAL_NAME[self.data.task]])
        if self.case.extra.get("per_class"):
            self.log_dict({f"val_acc_class_{c}": m[f"acc_{c}"] for c in range(self.data.num_classes)})

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.case.extra.get(
            "grad_norm"
        ):  # the total of Lightning's utility; per parameter is too slow here
            self.log("grad_2.0_norm_total", grad_norm(self, norm_type=2)["grad_2.0_norm_total"])

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if not self.case.fault.get("no_zero_grad"):
            optimizer.zero_grad()

    def configure_optimizers(self) -> Any:
        case = self.case
        name = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[case.optimizer]
        opt = getattr(torch.optim, name)
        kw = {"momentum": 0.9} if name == "SGD" else {}
        optimizer = opt(
            [p for p in self.parameters() if p.requires_grad],
            lr=case.lr,
            weight_decay=case.weight_decay,
            **kw,
        )
        sched = pipeline.schedule(case.schedule, optimizer, self.total_steps, case.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def record(case: Case, work: Path) -> list[runio.Event]:
    pl.seed_everything(case.seed, verbose=False)
    data = make(case.dataset, case.seed, case.fault)
    train, val, _ = pipeline.loaders(data, case.batch, case.aug, case.fault, case.seed)
    module = Module(case, data, case.epochs * len(train))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=case.epochs,
        logger=TensorBoardLogger(str(work), name="lightning_logs"),
        callbacks=[LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=case.extra["log_every"],
        gradient_clip_val=case.clip or None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train, val)
    return runio.from_logdir(work / "lightning_logs")


def cases() -> list[Case]:
    def c(dataset: str, model: str, **kw: Any) -> Case:
        return Case(WRITER, dataset, model, **{"epochs": 6, **kw})

    seg = c("seg", "unet", epochs=5, batch=16, optimizer="adam", lr=2e-3)
    kp = c("keypoints", "cnn", epochs=8, optimizer="adam", lr=2e-3)
    out = [
        healthy(c("digits", "cnn"), "base"),
        healthy(c("textures", "resnet"), "cutmix"),
        healthy(c("textures", "cnn"), "heavy_aug"),
        healthy(c("digits", "mlp"), "dropout"),
        healthy(c("textures", "vit", width=24, optimizer="adamw", lr=2e-3), "clip"),
        healthy(c("digits", "resnet"), "onecycle"),
        healthy(c("digits", "cnn"), "batch256"),
        healthy(seg, "base"),
        healthy(kp, "base"),
        faulty(c("digits", "cnn"), "lr_high"),
        faulty(c("textures", "resnet"), "lr_low"),
        faulty(c("digits", "resnet"), "no_zero_grad"),
        faulty(c("textures", "cnn"), "unshuffled"),
        faulty(c("shapes", "resnet"), "frozen_backbone"),
        faulty(c("textures", "mlp"), "unnormalised"),
        faulty(c("digits", "cnn"), "label_noise"),
        faulty(c("textures", "cnn", extra={"per_class": True}), "rare_class"),
        faulty(c("digits", "mlp"), "sigmoid_deep"),
        faulty(c("textures", "cnn"), "tiny_model"),
        faulty(c("textures", "resnet"), "wrong_loss"),
        faulty(c("digits", "cnn"), "overfit"),
        faulty(c("textures", "mlp"), "exploding"),
        faulty(c("digits", "cnn"), "corrupt_nan"),
        harmless(faulty(seg, "lr_high"), "Adam at lr 2.0 on the batch-normed U-Net still reached IoU 0.88"),
        faulty(kp, "corrupt_huge"),
        faulty(c("textures", "cnn"), "dying_relu"),
    ]
    for i, case in enumerate(out):
        case.seed = 200 + i
        case.extra = {"log_every": (1, 10, 50, 5)[i % 4], "grad_norm": i % 3 == 0, **case.extra}
        if case.label in ("exploding", "dying_relu", "sigmoid_deep", "corrupt_nan", "corrupt_huge"):
            case.extra["log_every"] = min(case.extra["log_every"], 5)
    return out
