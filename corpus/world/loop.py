"""The plain PyTorch training loop of the writers that own their loop (custom, timm-style, YOLO-style).

It reports raw numbers (loss, its parts, batch accuracy, lr, gradient norm, data and step time,
throughput; then each evaluation's numbers) to callbacks; each writer logs them under its own names.
The optimiser-side faults live here: a forgotten ``optimizer.zero_grad()`` and a run that a user
stops after its loss has been NaN for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from corpus.world import nets, pipeline, tasks
from corpus.world.cases import Case
from corpus.world.data import Data, make

NAN_PATIENCE = 40  # steps of non-finite loss before the "user" stops the run


def outputs(data: Data) -> int:
    return {"classification": data.num_classes, "keypoints": 4, "detection": data.num_classes}.get(
        data.task, 1
    )


def model_for(case: Case, data: Data, family: str | None = None) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    model = nets.build(
        family or case.model,
        data.channels,
        outputs(data),
        size=data.size,
        task=data.task,
        width=case.width,
        depth=case.depth,
        act=case.act,
        norm=case.norm,
        dropout=case.dropout,
    )
    return nets.apply_fault(model, case.fault)


def run(
    case: Case,
    on_step: Callable[[int, int, dict[str, float]], None],
    on_eval: Callable[[int, int, dict[str, float]], None],
    model: torch.nn.Module | None = None,
    loss_fn: Callable[[torch.Tensor, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
    framework: Callable[[torch.nn.Module, int], tuple[torch.optim.Optimizer, Any]] | None = None,
    batch_fn: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]] | None = None,
) -> dict[str, float]:
    """Train `case`; on_step(step, epoch, numbers) after each update, on_eval(step, epoch, numbers)
    after each epoch. Returns the last evaluation.

    A writer with its framework's own pieces passes `framework(model, updates_per_epoch)` giving
    (optimizer, scheduler with ``step_update(num_updates)``, as timm's) and `batch_fn` (timm's Mixup).
    """
    torch.manual_seed(case.seed)
    data = make(case.dataset, case.seed, case.fault)
    model = model or model_for(case, data)
    train, val, collate = pipeline.loaders(data, case.batch, case.aug, case.fault, case.seed)
    total = case.epochs * len(train)
    if framework is None:
        opt = pipeline.optimizer(case.optimizer, model.parameters(), case.lr, case.weight_decay)
        torch_sched = pipeline.schedule(case.schedule, opt, total, case.lr)
        update: Callable[[int], Any] = lambda _: torch_sched.step()  # noqa: E731
    else:
        opt, timm_sched = framework(model, len(train))
        update = timm_sched.step_update
    opts = {"label_smoothing": case.label_smoothing, "wrong_loss": case.fault.get("wrong_loss")}
    compute = loss_fn or (lambda out, y: tasks.loss(data.task, out, y, opts))
    step, bad, last = 0, 0, {}
    for epoch in range(case.epochs):
        tick = time.perf_counter()
        for x, y in train:
            data_time = time.perf_counter() - tick
            if batch_fn is not None:
                x, y = batch_fn(x, y)
            lr = opt.param_groups[0]["lr"]
            out = model(x)
            loss, parts = compute(out, y)
            if not case.fault.get("no_zero_grad"):
                opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            norm = pipeline.grad_norm(model)
            if case.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), case.clip)
            opt.step()
            update(step + 1)
            numbers = {"loss": float(loss.detach()), "lr": lr, "grad_norm": norm, "data_time": data_time}
            numbers.update({k: float(v) for k, v in parts.items()})
            if data.task == "classification":
                numbers["acc"] = tasks.batch_acc(out, y)
            step_time = time.perf_counter() - tick
            numbers.update(step_time=step_time, throughput=len(x) / step_time)
            on_step(step, epoch, numbers)
            step += 1
            bad = 0 if torch.isfinite(loss) else bad + 1
            tick = time.perf_counter()
            if bad >= NAN_PATIENCE:
                break
        last = tasks.evaluate(data.task, model, val, data.num_classes)
        on_eval(step, epoch, last)
        if bad >= NAN_PATIENCE:
            break
    del collate
    return last
