"""Losses and validation metrics of the four tasks, shared by every writer.

`loss(task, out, y, opts)` returns the total and, for multi-part losses (segmentation BCE + Dice,
detection box + objectness + class), its parts; `evaluate(task, model, loader)` returns plain
numbers (val loss, accuracy / IoU / pixel error / precision, recall, mAP) that each writer then logs
under its own names. ``opts["wrong_loss"]`` is the classic bug of a softmax before cross-entropy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GRID = 4


def loss(
    task: str, out: torch.Tensor, y: Any, opts: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if task == "classification":
        if opts.get("wrong_loss"):  # softmax, then CrossEntropyLoss (which applies its own)
            return F.cross_entropy(F.softmax(out, 1), y), {}
        return F.cross_entropy(out, y, label_smoothing=opts.get("label_smoothing", 0.0)), {}
    if task == "segmentation":
        bce = F.binary_cross_entropy_with_logits(out, y)
        p = torch.sigmoid(out)
        dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        return bce + dice.mean(), {"bce": bce, "dice": dice.mean()}
    if task == "keypoints":
        return F.mse_loss(out, y), {}
    if task == "detection":
        parts = detection_loss(out, y)
        return parts["box"] * 5 + parts["obj"] + parts["cls"], parts
    raise ValueError(f"unknown task {task!r}")


def grid_targets(targets: list[torch.Tensor], classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell: (has object, cx, cy, w, h, class) of the object whose centre falls in it."""
    t = torch.zeros(len(targets), GRID, GRID, 6)
    for i, rows in enumerate(targets):
        for c, cx, cy, w, h in rows.tolist():
            gx, gy = min(int(cx * GRID), GRID - 1), min(int(cy * GRID), GRID - 1)
            t[i, gy, gx] = torch.tensor([1, cx, cy, w, h, c])
    return t, t[..., 0] > 0


def decode(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes (cx, cy, w, h in [0, 1]), objectness logits and class logits per cell."""
    n = out.shape[0]
    p = out.permute(0, 2, 3, 1)  # N, gy, gx, 5 + C
    offs = torch.arange(GRID, dtype=out.dtype)
    cx = (torch.sigmoid(p[..., 0]) + offs[None, None, :]) / GRID
    cy = (torch.sigmoid(p[..., 1]) + offs[None, :, None]) / GRID
    wh = torch.sigmoid(p[..., 2:4]) * 0.6
    boxes = torch.cat([cx[..., None], cy[..., None], wh], -1).reshape(n, GRID, GRID, 4)
    return boxes, p[..., 4], p[..., 5:]


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (cx, cy, w, h) boxes, elementwise."""
    a0, a1 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b0, b1 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp_min(0).prod(-1)
    return inter / (a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter + 1e-9)


def detection_loss(out: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    t, pos = grid_targets(targets, out.shape[1] - 5)
    boxes, obj, cls = decode(out)
    obj_loss = F.binary_cross_entropy_with_logits(obj, pos.float())
    if pos.any():
        box_loss = (1 - iou(boxes[pos], t[..., 1:5][pos])).mean()
        cls_loss = F.cross_entropy(cls[pos], t[..., 5][pos].long())
    else:
        box_loss = cls_loss = out.sum() * 0
    return {"box": box_loss, "obj": obj_loss, "cls": cls_loss}


def _ap(scores: np.ndarray, hits: np.ndarray, total: int) -> float:
    if total == 0:
        return 0.0
    order = np.argsort(-scores)
    tp = np.cumsum(hits[order])
    recall = tp / total
    precision = tp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.concatenate([[0], recall])) * envelope))


def detection_metrics(
    outs: list[torch.Tensor], targets: list[torch.Tensor], classes: int
) -> dict[str, float]:
    """Precision and recall at confidence 0.25 / IoU 0.5, mAP at 0.5 and averaged over 0.5:0.95."""
    out = torch.cat(outs)
    boxes, obj, cls = decode(out)
    score = torch.sigmoid(obj)[..., None] * F.softmax(cls, -1)
    conf, label = score.max(-1)
    thresholds = np.arange(0.5, 0.96, 0.05)
    aps = np.zeros((len(thresholds), classes))
    tp_at = fp_at = 0
    total_at = 0
    for c in range(classes):
        scores, hits, total = [], [], 0
        for i, rows in enumerate(targets):
            gt = rows[rows[:, 0] == c][:, 1:5]
            total += len(gt)
            keep = (label[i] == c) & (conf[i] > 0.01)
            pb, ps = boxes[i][keep], conf[i][keep]
            order = torch.argsort(ps, descending=True)
            ious = iou(pb[order][:, None], gt[None]) if len(gt) else torch.zeros(len(order), 0)
            for j in range(len(order)):
                scores.append(float(ps[order[j]]))
                hit = np.zeros(len(thresholds))
                if ious.shape[1]:
                    best = float(ious[j].max())
                    hit = (best >= thresholds).astype(float)
                    if best >= 0.5 and float(ps[order[j]]) > 0.25:
                        tp_at += 1
                        ious[:, int(ious[j].argmax())] = 0  # matched: later boxes cannot reuse it
                    elif float(ps[order[j]]) > 0.25:
                        fp_at += 1
                elif float(ps[order[j]]) > 0.25:
                    fp_at += 1
                hits.append(hit)
        total_at += total
        if scores:
            h = np.array(hits)
            for k in range(len(thresholds)):
                aps[k, c] = _ap(np.array(scores), h[:, k], total)
    return {
        "precision": tp_at / max(1, tp_at + fp_at),
        "recall": tp_at / max(1, total_at),
        "map50": float(aps[0].mean()),
        "map": float(aps.mean()),
    }


@torch.no_grad()
def evaluate(task: str, model: torch.nn.Module, loader: Any, classes: int) -> dict[str, float]:
    """Validation numbers: loss (+ parts), and acc/top5/per-class, iou/dice, pixel error, or mAP."""
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    correct = torch.zeros(max(1, classes))
    count = torch.zeros(max(1, classes))
    outs, targets = [], []
    top5 = 0.0
    inter = union = err = 0.0
    for x, y in loader:
        out = model(x)
        total, parts = loss(task, out, y, {})
        b = len(x)
        n += b
        for k, v in {"loss": total, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        if task == "classification":
            pred = out.argmax(1)
            correct += torch.bincount(y[pred == y], minlength=classes).float()
            count += torch.bincount(y, minlength=classes).float()
            top5 += float((out.topk(min(5, classes), 1).indices == y[:, None]).any(1).sum())
        elif task == "segmentation":
            p = out > 0
            inter += float((p & (y > 0.5)).sum())
            union += float((p | (y > 0.5)).sum())
        elif task == "keypoints":
            err += float((out - y).view(b, -1, 2).norm(dim=-1).mean(1).sum()) * x.shape[-1]
        else:
            outs.append(out)
            targets.extend(y)
    model.train(was)
    m = {k: v / n for k, v in sums.items()}
    if task == "classification":
        m["acc"] = float(correct.sum() / count.sum())
        m["top5"] = top5 / n
        m.update({f"acc_{c}": float(correct[c] / count[c].clamp_min(1)) for c in range(classes)})
    elif task == "segmentation":
        m["iou"] = inter / max(1.0, union)
    elif task == "keypoints":
        m["pixel_error"] = err / n
    else:
        m.update(detection_metrics(outs, targets, classes))
    return m


def batch_acc(out: torch.Tensor, y: torch.Tensor) -> float:
    """Training accuracy of a batch; soft (mixed) targets count their larger part."""
    target = y.argmax(1) if y.dim() == 2 else y
    return float((out.argmax(1) == target).float().mean())
