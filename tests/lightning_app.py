"""A small Lightning classifier of scikit-learn's digits (real 8x8 images, shipped with the package),
for the integration tests; run as a script it trains under the DDP strategy on 2 CPU processes (gloo),
which Lightning launches by running this file again for rank 1."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def digits(batch_size: int = 32) -> tuple[DataLoader[Any], DataLoader[Any]]:
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32) / 16.0
    labels = torch.tensor(y)
    train = TensorDataset(images[:1500], labels[:1500])
    val = TensorDataset(images[1500:], labels[1500:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=128)


class Digits(pl.LightningModule):
    def __init__(self, lr: float = 0.1, hidden: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.995)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def trainer(root: str, callbacks: list[Any], logger: Any, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


if __name__ == "__main__":  # python lightning_app.py SERVER PROJECT ROOT
    from trainpilot.integrations.lightning import TrainpilotCallback, TrainpilotLogger

    server, project, root = sys.argv[1:4]
    torch.manual_seed(0)
    train, val = digits(batch_size=16)
    fit = trainer(
        root,
        [TrainpilotCallback()],
        TrainpilotLogger(project=project, server=server, data_dir=f"{root}/trainpilot"),
        devices=2,
        strategy="ddp",
        max_epochs=200,
        max_time="00:00:02:00",
    )
    fit.fit(Digits(lr=0.05), train, val)
