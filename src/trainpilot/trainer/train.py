"""The reference trainer: real PyTorch image classification, observable and controllable live.

    trainpilot train                                  # small CNN on scikit-learn's digits, ~1 min on 2 cores
    trainpilot train --data shapes --model resnet --image-size 48 --epochs 10
    trainpilot train --data folder:~/pets --model tv:resnet18 --device cuda
    trainpilot train --config run.toml --lr 0.1       # a TOML/YAML file, flags win
    trainpilot train --resume checkpoints/r-1a2b/step-400.pt

Every step it logs train/loss, train/acc, lr, grad_norm (global, first and last layer, and every
weight), step_time_s, data_time_s (the part of it spent getting the batch) and images_per_s; every
epoch val/loss, val/acc, per-class accuracy and a confusion matrix; every few seconds system/* (CPU,
RAM, GPU). It also writes TensorBoard event files (when the `tensorboard` package is installed) so
existing TensorBoard workflows keep working.

Commands from the dashboard, the API or `trainpilot control` act on the training thread at the
next step: pause blocks until resume, stop ends cleanly, checkpoint writes model + optimizer +
scheduler + step to `--checkpoint-dir` (every run also ends with a final one, which `--resume` continues
in the same run), set_lr changes the optimizer's rate
(and stops the scheduler from overriding it).

Under torchrun it trains data-parallel, one run for the whole job:

    torchrun --standalone --nproc-per-node 2 -m trainpilot.cli train --server http://127.0.0.1:8765

Each rank takes its share of every batch (`--batch-size` is per rank) and DistributedDataParallel
averages the gradients; rank 0 logs the run, validates and writes checkpoints; every rank logs its
own system load as rank{r}/system/*; commands apply on all ranks at the same step.

Fault knobs (--label-noise, --train-fraction, --no-normalize, --loader-delay, --init-scale,
--activation sigmoid --depth 8) make the classic failure cases for the analysis engine's corpus out
of the same code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trainpilot.exceptions import MissingExtra
from trainpilot.extras import extra
from trainpilot.sdk.run import Run
from trainpilot.sdk.system import system_metrics
from trainpilot.trainer.config import TrainConfig
from trainpilot.trainer.datasets import Split, load
from trainpilot.trainer.models import build

with extra("train", "trainpilot train"):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel


def join_process_group(device: str) -> None:
    """Under torchrun (WORLD_SIZE > 1) join the job's process group: NCCL for CUDA, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = pick_device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # under torchrun: one GPU per rank
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def corrupt_labels(
    y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    if fraction <= 0:
        return y
    y = y.clone()
    flip = torch.rand(len(y), generator=generator) < fraction
    y[flip] = torch.randint(0, num_classes, (int(flip.sum()),), generator=generator)
    return y


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the image (no flips: a mirrored digit is another digit)."""
    h, w = x.shape[-2:]
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return padded[:, :, dy : dy + h, dx : dx + w]


class Trainer:
    """One training run on its own thread; `run` (trainpilot) observes and controls it."""

    def __init__(self, cfg: TrainConfig, run: Run, data: Split | None = None) -> None:
        self.cfg = cfg
        self.run = run
        self.device = pick_device(cfg.device)
        distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.data = data or load(
            cfg.data,
            seed=cfg.seed,
            image_size=cfg.image_size,
            count=cfg.count,
            num_classes=cfg.classes,
            difficulty=cfg.difficulty,
            normalize=cfg.normalize,
        )
        channels = self.data.shape[0]
        self.model = build(
            cfg.model,
            channels,
            len(self.data.classes),
            activation=cfg.activation,
            depth=cfg.depth,
            batch_norm=cfg.batch_norm,
            width=cfg.width,
        ).to(self.device)
        if cfg.init_scale != 1.0:
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.dim() > 1:
                        p.mul_(cfg.init_scale)
        # what the training step calls: under torchrun it averages gradients over the ranks
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = self._optimizer()
        n_train = max(1, int(len(self.data.train_x) * cfg.train_fraction))
        self.train_x = self.data.train_x[:n_train]
        self.train_y = corrupt_labels(
            self.data.train_y[:n_train], cfg.label_noise, len(self.data.classes), self.generator
        )
        self.global_batch = cfg.batch_size * self.world
        self.steps_per_epoch = math.ceil(n_train / self.global_batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.epoch = 0
        self.lr_override: float | None = None
        self.weights = [(n, p) for n, p in self.model.named_parameters() if p.dim() > 1]
        self.checkpoints: list[Path] = []
        self.final_val: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop_requested = False
        if cfg.resume:
            self.load(cfg.resume)
        run.on_control("set_lr", self.set_lr)
        run.on_control("checkpoint", lambda _: str(self.save("checkpoint")) if self.rank == 0 else None)
        self.tb = self._tensorboard() if self.rank == 0 else None

    # -- pieces ---------------------------------------------------------------------------------

    def _optimizer(self) -> torch.optim.Optimizer:
        params = self.model.parameters()
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay
            )
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        raise ValueError(f"unknown optimizer {self.cfg.optimizer!r}: use sgd or adamw")

    def _lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        progress = min(1.0, step / max(1, self.total_steps))
        if self.cfg.scheduler == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if self.cfg.scheduler == "step":
            return warm * 0.1 ** int(progress * 3)
        if self.cfg.scheduler == "none":
            return warm
        raise ValueError(f"unknown scheduler {self.cfg.scheduler!r}: use cosine, step or none")

    def _tensorboard(self) -> Any:
        if not self.cfg.tensorboard_dir:
            return None
        try:
            with extra("train", "writing TensorBoard files"):
                from torch.utils.tensorboard import SummaryWriter
        except MissingExtra as exc:
            print(f"trainpilot: {exc}; training without them", file=sys.stderr)
            return None
        return SummaryWriter(os.path.join(self.cfg.tensorboard_dir, self.run.id))

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, value: float) -> float:
        """A live set_lr wins over the schedule from now on."""
        self.lr_override = float(value)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_override
        return self.lr_override

    def save(self, reason: str) -> Path:
        folder = Path(self.cfg.checkpoint_dir) / self.run.id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step}.pt"
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "lr_override": self.lr_override,
                "config": dataclasses.asdict(self.cfg),
                "run_id": self.run.id,
                "reason": reason,
            },
            path,
        )
        self.checkpoints.append(path)
        self.run.log_event(
            "log", {"text": f"checkpoint ({reason}) written to {path}", "path": str(path)}, step=self.step
        )
        return path

    def load(self, path: str) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.lr_override = state.get("lr_override")

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> Trainer:
        self._thread = threading.Thread(target=self._main, name="trainpilot-training", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to end at the next step, as a stop command would (used on Ctrl-C)."""
        self._stop_requested = True

    def join(self) -> None:
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.2)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            self.fit()
        except BaseException as exc:
            self._error = exc
            self.run.log_event(
                "log", {"text": f"training failed: {type(exc).__name__}: {exc}"}, step=self.step
            )
            self.run.finish("failed")

    def fit(self) -> None:
        """Train to the end (or until stopped), validating each epoch; finish the run."""
        bar = self._progress()
        next_system = 0.0
        stopped = False
        start_epoch = self.epoch
        for epoch in range(start_epoch, self.cfg.epochs):
            self.epoch = epoch
            order = self._epoch_order()
            first = (
                (self.step - epoch * self.steps_per_epoch) * self.global_batch if epoch == start_epoch else 0
            )
            for i in range(max(0, first), len(order), self.global_batch):
                self.run.wait_if_paused()
                if self.run.should_stop or self._stop_requested:
                    stopped = True
                    break
                metrics = self.train_step(order[i : i + self.global_batch][self.rank :: self.world])
                self.run.log(metrics, step=self.step)
                self._tb_scalars(metrics)
                if time.monotonic() >= next_system:
                    system = system_metrics(self.device)
                    self.run.log(system, step=self.step)
                    if self.world > 1:
                        self.run.log_rank(system, step=self.step)
                    next_system = time.monotonic() + self.cfg.system_every_s
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    self.validate()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['lr']:.3g}")
            if stopped:
                break
            self.epoch = epoch + 1
            if not self.cfg.eval_every:
                self.validate()
        if bar is not None:
            bar.close()
        if self.rank == 0:
            self.save("stop" if stopped else "final")
        if self.tb is not None:
            self.tb.close()
        self.run.finish("stopped" if stopped else "finished")

    def _epoch_order(self) -> torch.Tensor:
        """The epoch's shuffled indices, the same on every rank (same seed, same draws), padded with
        its first ones to a multiple of the ranks so every rank gets a share of every batch."""
        order = torch.randperm(len(self.train_x), generator=self.generator)
        pad = -len(order) % self.world
        return torch.cat([order, order[:pad]]) if pad else order

    def train_step(self, index: torch.Tensor) -> dict[str, float]:
        started = time.perf_counter()
        if self.cfg.loader_delay and self.step >= self.total_steps // 3:
            time.sleep(self.cfg.loader_delay)
        x = self.train_x[index].to(self.device, non_blocking=True)
        y = self.train_y[index].to(self.device, non_blocking=True)
        if self.cfg.augment:
            x = augment(x, self.generator)
        data_time = time.perf_counter() - started
        self.model.train()
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        norms = self.grad_norms()
        self.optimizer.step()
        lr = self.lr()
        if self.lr_override is None:
            self.scheduler.step()
        else:
            self.scheduler.last_epoch += 1
        self.step += 1
        elapsed = time.perf_counter() - started
        return {
            "train/loss": float(loss.detach()),
            "train/acc": float((logits.argmax(1) == y).float().mean()),
            "lr": lr,
            **norms,
            "step_time_s": elapsed,
            "data_time_s": data_time,
            "images_per_s": len(index) * self.world / elapsed,  # all ranks together
            "epoch": self.epoch,
        }

    def grad_norms(self) -> dict[str, float]:
        """Global gradient norm, the first and last weight's, and every weight's (grad_norm/layer/...)."""
        per_layer = {
            name: float(p.grad.detach().norm()) if p.grad is not None else 0.0 for name, p in self.weights
        }
        total = math.sqrt(
            sum(float(p.grad.detach().pow(2).sum()) for p in self.model.parameters() if p.grad is not None)
        )
        names = list(per_layer)
        out = {
            "grad_norm": total,
            "grad_norm/first_layer": per_layer[names[0]],
            "grad_norm/last_layer": per_layer[names[-1]],
        }
        out.update({f"grad_norm/layer/{n}": v for n, v in per_layer.items()})
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Rank 0 validates for all: DistributedDataParallel keeps the weights the same on every rank."""
        if self.rank != 0:
            return {}
        self.model.eval()
        k = len(self.data.classes)
        confusion = torch.zeros(k, k, dtype=torch.long)
        total_loss = 0.0
        for i in range(0, len(self.data.val_x), 512):
            x = self.data.val_x[i : i + 512].to(self.device)
            y = self.data.val_y[i : i + 512].to(self.device)
            logits = self.model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(1)
            confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
        n = int(confusion.sum())
        per_class = confusion.diag().float() / confusion.sum(1).clamp_min(1).float()
        metrics = {"val/loss": total_loss / n, "val/acc": float(confusion.diag().sum()) / n}
        metrics.update(
            {f"val/acc/{name}": float(v) for name, v in zip(self.data.classes, per_class, strict=True)}
        )
        self.run.log(metrics, step=self.step)
        self.run.log_event(
            "media",
            {
                "type": "confusion_matrix",
                "classes": self.data.classes,
                "matrix": confusion.tolist(),
                "epoch": self.epoch,
            },
            step=self.step,
        )
        self._tb_scalars(metrics)
        self._log_samples()
        self.final_val = metrics
        return metrics

    @torch.no_grad()
    def _log_samples(self, count: int = 8) -> None:
        """A strip of validation images with predicted / true labels: what the model gets wrong, seen."""
        x = self.data.val_x[:count]
        pred = self.model(x.to(self.device)).argmax(1).cpu()
        truth = self.data.val_y[:count]
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        tiles = (x - lo) / (hi - lo).clamp_min(1e-6)
        size = max(64, x.shape[-1])
        tiles = F.interpolate(tiles, size=(size, size), mode="nearest")
        strip = torch.cat(list(tiles), dim=2)  # C x H x (W * count)
        names = self.data.classes
        caption = "  ".join(
            f"{names[p]}/{names[t]}{'' if p == t else ' ✗'}" for p, t in zip(pred, truth, strict=True)
        )
        self.run.log_image("samples", strip, step=self.step, caption=f"predicted/true: {caption}")
        if self.tb is not None:
            self.tb.add_image("samples", strip, self.step)

    def _tb_scalars(self, metrics: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in metrics.items():
                if not key.startswith("grad_norm/layer/"):
                    self.tb.add_scalar(key, value, self.step)

    def _progress(self) -> Any:
        if not (self.cfg.progress and sys.stderr.isatty()) or self.rank != 0:
            return None
        try:
            with extra("train", "the progress bar"):
                from tqdm import tqdm
        except MissingExtra as exc:
            print(f"trainpilot: {exc} (or --no-progress)", file=sys.stderr)
            return None
        return tqdm(total=self.total_steps, initial=self.step, unit="step", desc=self.run.id, file=sys.stderr)
