"""Check every label of the world corpus against the run's own numbers.

    python corpus/world/check.py            # every writer; exits 1 if any label is contradicted
    python corpus/world/check.py --writer keras --verbose

For each run it finds the curves by their names (its own small tables below, not the analysis
package's matching, which is what the corpus judges), computes the evidence for its label (healthy:
the loss fell and the final validation metric is good; lr_high: the loss went NaN or rose k-fold;
overfit: validation loss rose N evaluations in a row while training loss fell; slow loader: the
share of a step spent waiting for data before and after the onset; rare class: that class's
accuracy against the others' ...) and says whether it supports the label. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNS = Path(__file__).resolve().parent / "runs"
CHANCE = {"digits": 0.1, "shapes": 1 / 6, "textures": 1 / 8, "detect": 0.0}
CLASSES = {"digits": 10, "shapes": 6, "textures": 8, "detect": 3}

# candidates in order; the first present wins (exact names as each writer writes them)
TRAIN_LOSS = [
    "train/loss",
    "Loss/train",
    "training_loss",
    "loss_train",
    "train_loss_step",
    "train_loss_epoch",
    "loss",  # before train_loss: timm logs both, per step and per epoch
    "train_loss",
    "train/epoch_loss",
    "train/total_loss",
]
VAL_LOSS = [
    "val/loss",
    "Loss/val",
    "loss_val",
    "loss_val",
    "val_loss",
    "eval/loss",
    "eval_loss",
    "validation/epoch_loss",
    "val/total_loss",
]
# (name, higher is better)
VAL_METRIC = [
    ("val/acc", True),
    ("Accuracy/val", True),
    ("acc_val", True),
    ("val_acc", True),
    ("accuracy_val", True),
    ("eval/accuracy", True),
    ("eval_top1", True),
    ("val_accuracy", True),
    ("validation/epoch_accuracy", True),
    ("IoU/val", True),
    ("miou_val", True),
    ("val_iou", True),
    ("iou_val", True),
    ("eval/iou", True),
    ("metrics/mAP50(B)", True),
    ("metrics/mAP_0.5", True),
    ("PixelError/val", False),
    ("px_err_val", False),
    ("val_pixel_error", False),
    ("pixel_error_val", False),
    ("eval/pixel_error", False),
    ("val_mae", False),
    ("validation/epoch_mae", False),
]
TRAIN_ACC = [
    "train/acc",
    "Accuracy/train",
    "training_acc",
    "acc",
    "accuracy_train",
    "train_acc_step",
    "train_acc_epoch",
    "train_acc",
    "accuracy",
    "train/epoch_accuracy",
    "train/accuracy",
]
DATA_TIME = ["data_time_s", "time/data", "data_time", "dataloader_ms", "train/data_time"]
STEP_TIME = ["step_time_s", "time/step", "batch_time", "iter_ms", "train/batch_time"]
THROUGHPUT = ["images_per_s", "samples_per_sec", "train/samples_per_second"]
GRAD = ["grad_norm", "train/grad_norm", "gradients/total_norm", "grad_2.0_norm_total"]
# a good final validation metric for a healthy run, per task (pixel error: at most this many pixels)
GOOD = {"classification": 0.6, "segmentation": 0.7, "keypoints": 2.5, "detection": 0.3}


def load(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Curves:
    events: list[dict[str, Any]]
    names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.names = {k for e in self.events for k in e["data"]}

    def get(self, name: str) -> tuple[list[int], list[float]]:
        steps, values = [], []
        for e in self.events:
            if name in e["data"]:
                steps.append(e["step"])
                values.append(float(e["data"][name]))
        return steps, values

    def first(self, candidates: list[str]) -> str | None:
        return next((n for n in candidates if n in self.names), None)

    def matching(self, pattern: str) -> list[str]:
        return sorted(n for n in self.names if re.fullmatch(pattern, n))


@dataclass
class Verdict:
    ok: bool
    evidence: dict[str, Any]
    headline: str
    reason: str = ""


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def med(values: list[float]) -> float:
    v = finite(values)
    return statistics.median(v) if v else math.nan


def head(values: list[float], frac: float = 0.1) -> float:
    return med(values[: max(3, int(len(values) * frac))])


def tail(values: list[float], frac: float = 0.1) -> float:
    return med(values[-max(3, int(len(values) * frac)) :])


def r(x: float) -> float | str:
    return x if not math.isfinite(x) else float(f"{x:.4g}")


def train_loss(c: Curves) -> tuple[str, list[int], list[float]]:
    """The training loss with at least 5 points (Lightning logs few step points when an epoch has
    fewer batches than log_every_n_steps: then its epoch means), else the first present."""
    present = [n for n in TRAIN_LOSS if n in c.names]
    name = next((n for n in present if len(c.get(n)[1]) >= 5), present[0] if present else None)
    if name is not None:
        return (name, *c.get(name))
    total = summed(c, r"train/\w+_loss")  # detection writers log only the parts: sum them per step
    if total is None:
        raise ValueError(f"no training loss among {sorted(c.names)[:20]}")
    return total


def summed(c: Curves, pattern: str) -> tuple[str, list[int], list[float]] | None:
    """The per-step sum of the metrics matching `pattern` (a detection loss's parts), if any."""
    parts = c.matching(pattern)
    if not parts:
        return None
    steps, values = [], []
    for e in c.events:
        if all(p in e["data"] for p in parts):
            steps.append(e["step"])
            values.append(sum(float(e["data"][p]) for p in parts))
    return ("+".join(parts), steps, values)


def val_loss(c: Curves) -> tuple[str, list[int], list[float]] | None:
    name = c.first(VAL_LOSS)
    if name is not None:
        return (name, *c.get(name))
    return summed(c, r"val/\w+_loss")


def val_metric(c: Curves) -> tuple[str, bool, list[float]] | None:
    for name, higher in VAL_METRIC:
        if name in c.names:
            return name, higher, c.get(name)[1]
    return None


def basics(entry: dict[str, Any], c: Curves) -> dict[str, Any]:
    """Numbers every verdict uses: loss start/end/min, NaN step, final validation metric."""
    name, steps, loss = train_loss(c)
    ev: dict[str, Any] = {"train_loss": name, "points": len(loss)}
    bad = [s for s, v in zip(steps, loss, strict=True) if not math.isfinite(v)]
    ev["nan_step"] = bad[0] if bad else None
    # Hugging Face leaves a NaN loss out of its logged mean: the gradient norm or evaluation shows it
    any_bad = [e["step"] for e in c.events if any(not math.isfinite(float(v)) for v in e["data"].values())]
    ev["any_nan_step"] = any_bad[0] if any_bad else None
    ev["loss_start"] = r(head(loss, 0.05))
    ev["loss_end"] = r(tail(loss))
    ev["loss_min"] = r(min(finite(loss), default=math.nan))
    ev["loss_peak_ratio"] = r(max(finite(loss), default=math.nan) / max(1e-12, head(loss, 0.05)))
    metric = val_metric(c)
    if metric:
        ev["val_metric"], higher, values = metric[0], metric[1], metric[2]
        if "top1" in metric[0]:  # timm reports percent
            values = [v / 100 for v in values]
        ev["val_final"] = r(values[-1]) if values else None
        ev["val_best"] = r((max if higher else min)(finite(values), default=math.nan))
        ev["higher_is_better"] = higher
    return ev


def good_final(entry: dict[str, Any], ev: dict[str, Any]) -> bool | None:
    if "val_final" not in ev or ev["val_final"] is None:
        return None
    v = float(ev["val_final"])
    goal = GOOD[entry["task"]]
    if entry["task"] == "keypoints" and ev.get("higher_is_better") is False:
        return v <= goal
    return v >= goal


def judge(entry: dict[str, Any], events: list[dict[str, Any]], twin: float | None = None) -> Verdict:
    """`twin`: the median final validation metric of the healthy runs of the same writer and data set."""
    c = Curves(events)
    ev = basics(entry, c)
    if twin is not None:
        ev["healthy_twin_final"] = r(twin)
    label = entry["label"]
    fn = JUDGES.get(label)
    if fn is None:
        return Verdict(False, ev, "?", f"no check for label {label!r}")
    ok, reason = fn(entry, c, ev)
    metric = f"{ev.get('val_metric', 'no val metric')} {ev.get('val_final')}"
    headline = f"{metric}, loss {ev['loss_start']} -> {ev['loss_end']}"
    return Verdict(ok, ev, headline, reason)


# -- one check per label: (supported?, why not) ----------------------------------------------------


def j_healthy(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    fell = float(ev["loss_end"]) < 0.9 * float(ev["loss_start"])  # mixup and smoothing keep losses high
    good = good_final(entry, ev)
    ev["loss_fell"] = fell
    ev["final_good"] = good
    if ev["nan_step"] is not None:
        return False, f"non-finite loss at step {ev['nan_step']}"
    if not fell:
        return False, "training loss did not fall by 10 %"
    if good is False:
        return False, f"final validation metric {ev['val_final']} is not good (goal {GOOD[entry['task']]})"
    return True, ""


def diverged(ev: dict[str, Any], k: float = 3.0) -> bool:
    return ev["nan_step"] is not None or float(ev["loss_peak_ratio"]) >= k


def far_from_good(entry: dict[str, Any], ev: dict[str, Any]) -> bool:
    good = good_final(entry, ev)
    return good is False


def far_below_twin(ev: dict[str, Any]) -> bool:
    """The final metric at most 60 % of the healthy runs' (higher is better) or 1.7x (lower)."""
    twin, final = ev.get("healthy_twin_final"), ev.get("val_final")
    if twin is None or final is None:
        return False
    if ev.get("higher_is_better", True):
        return float(final) <= 0.6 * float(twin)
    return float(final) >= 1.7 * float(twin)


def at_chance(entry: dict[str, Any], ev: dict[str, Any]) -> bool:
    if entry["dataset"] not in CHANCE or "val_final" not in ev or ev.get("higher_is_better") is False:
        return False
    return float(ev["val_final"]) <= CHANCE[entry["dataset"]] + 0.15


def j_lr_high(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    ev["diverged"] = diverged(ev)
    ev["at_chance"] = at_chance(entry, ev)
    if (
        ev["diverged"]
        or ev["at_chance"]
        or (far_from_good(entry, ev) and float(ev["loss_end"]) > 0.7 * float(ev["loss_start"]))
    ):
        return True, ""
    return False, "the loss neither went NaN, rose 3x, nor stayed high"


def j_no_progress(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    ratio = float(ev["loss_end"]) / max(1e-12, float(ev["loss_start"]))
    ev["loss_end_over_start"] = r(ratio)
    ev["final_good"] = good_final(entry, ev)
    if ev["nan_step"] is not None:
        return False, "non-finite loss: this is divergence, not a lack of progress"
    if ratio > 0.5 and ev["final_good"] is not True:
        return True, ""
    return False, f"the loss fell to {ratio:.2f} of its start, or the final metric is good"


def j_no_zero_grad(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    _, _, loss = train_loss(c)
    fin = finite(loss)
    best_i = fin.index(min(fin)) if fin else 0
    after = fin[best_i:]
    ev["rise_after_best"] = r(max(after, default=math.nan) / max(1e-12, min(fin, default=1)))
    ev["diverged"] = diverged(ev, 2.0) or float(ev["rise_after_best"]) >= 3
    ev["final_good"] = good_final(entry, ev)
    if ev["diverged"] or ev["final_good"] is False:
        return True, ""
    return False, "the loss neither diverged nor did the final metric suffer"


def spikes(values: list[float], k: float = 3.0, window: int = 20) -> int:
    count = 0
    for i in range(window, len(values)):
        base = med(values[i - window : i])
        if math.isfinite(values[i]) and base > 0 and values[i] > k * base:
            count += 1
    return count


def j_unshuffled(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    _, _, loss = train_loss(c)
    ev["spikes_3x"] = spikes(loss)
    ev["final_good"] = good_final(entry, ev)
    if ev["final_good"] is False or ev["spikes_3x"] >= 3:
        return True, ""
    return False, "validation is good and the loss shows no class-boundary spikes"


def j_underfit(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    ev["final_good"] = good_final(entry, ev)
    if ev["nan_step"] is not None:
        return False, "non-finite loss"
    if ev["final_good"] is False or far_below_twin(ev):
        return True, ""
    return False, f"the final validation metric {ev.get('val_final')} is good"


def j_unnormalised(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    k = CLASSES.get(entry["dataset"])
    ev["initial_over_lnC"] = (
        r(float(ev["loss_start"]) / math.log(k)) if k and entry["task"] == "classification" else None
    )
    ev["diverged"] = diverged(ev)
    ev["final_good"] = good_final(entry, ev)
    if ev["diverged"] or ev["final_good"] is False or (ev["initial_over_lnC"] or 0) >= 3:
        return True, ""
    return False, "raw pixels did no visible harm here"


def j_label_noise(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    name = c.first(TRAIN_ACC)
    gap = math.nan
    if name and "val_final" in ev:
        gap = float(ev["val_final"]) - tail(c.get(name)[1], 0.2)
    ev["train_acc"] = name
    ev["val_minus_train_acc"] = r(gap)
    vl = val_loss(c)
    if vl:
        rise = vl[2][-1] / max(1e-12, min(finite(vl[2]), default=1))
        ev["val_loss_final_over_min"] = r(rise)
    ev["final_good"] = good_final(entry, ev)
    # or: validation is good while the training loss cannot go below half its start (wrong targets)
    ev["train_loss_end_over_start"] = r(float(ev["loss_end"]) / max(1e-12, float(ev["loss_start"])))
    unfittable = ev["final_good"] is True and float(ev["train_loss_end_over_start"]) >= 0.5
    if (math.isfinite(gap) and gap >= 0.1) or ev.get("val_loss_final_over_min", 1) >= 1.2 or unfittable:
        return True, ""
    return False, "train accuracy is not below validation, validation loss did not rise, the loss fell"


CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "shapes": ["circle", "square", "triangle", "cross", "ring", "diamond"],
    "textures": ["hstripe", "vstripe", "diag", "check", "rings", "dots", "blobs", "plain"],
}


def per_class(c: Curves, dataset: str) -> dict[str, str]:
    """{class token: metric name} of the family of per-class metrics (by index or by class name)."""
    for tokens in (CLASS_NAMES[dataset], [str(i) for i in range(CLASSES[dataset])]):
        for name in sorted(c.names):
            parts = re.split(r"([/_])", name)
            for i, part in enumerate(parts):
                if part != tokens[0]:
                    continue
                family = {t: "".join([*parts[:i], t, *parts[i + 1 :]]) for t in tokens}
                if all(n in c.names for n in family.values()):
                    return family
    return {}


def j_rare_class(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    family = per_class(c, entry["dataset"])
    if not family:
        return False, "no per-class metric for the rare class"
    finals = {t: finite(c.get(n)[1])[-1] for t, n in family.items()}
    rare, *rest = family
    others = statistics.mean(finals[t] for t in rest)
    ev["rare_metric"] = family[rare]
    ev["rare_final"] = r(finals[rare])
    ev["others_mean"] = r(others)
    if finals[rare] <= others - 0.25:
        return True, ""
    return False, "the rare class is not clearly weaker"


def time_series(c: Curves) -> tuple[str, list[int], list[float], str]:
    for group, kind in ((DATA_TIME, "data"), (STEP_TIME, "step"), (THROUGHPUT, "throughput")):
        name = c.first(group)
        if name:
            return (name, *c.get(name), kind)
    raise ValueError("no timing metric")


def j_slow(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    try:
        name, steps, values, kind = time_series(c)
    except ValueError:
        return False, "no data time, step time or throughput logged"
    onset = entry["onset"]
    before = med([v for s, v in zip(steps, values, strict=True) if s < onset])
    after = med([v for s, v in zip(steps, values, strict=True) if s > onset + 2])
    ev["timing"] = name
    ev["before_onset"], ev["after_onset"] = r(before), r(after)
    step_name = c.first(STEP_TIME)
    if kind == "data" and step_name:
        st = dict(zip(*c.get(step_name), strict=True))
        share = [v / st[s] for s, v in zip(steps, values, strict=True) if s > onset + 2 and st.get(s)]
        ev["data_share_after"] = r(med(share))
    ratio = after / before if kind != "throughput" else before / after
    ev["slowdown"] = r(ratio)
    if ratio >= 2:
        return True, ""
    return False, f"{name} changed only {ratio:.2f}x at the onset"


def j_corrupt(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    _, steps, loss = train_loss(c)
    onset = entry["onset"]
    before = med([v for s, v in zip(steps, loss, strict=True) if onset - 30 <= s < onset])
    around = [v for s, v in zip(steps, loss, strict=True) if onset <= s <= onset + 10]
    ev["loss_before_onset"] = r(before)
    ev["max_after_onset"] = r(
        max(around, key=lambda v: math.inf if not math.isfinite(v) else v, default=math.nan)
    )
    first_nan = ev["any_nan_step"]
    if first_nan is not None and onset <= first_nan <= onset + 30:  # the next log (every 1-25 steps)
        return True, ""
    if around and float(ev["max_after_onset"]) >= 5 * before:
        return True, ""
    # logged every N steps (or per epoch), the spike itself may fall between two points; the damage
    # it did shows in the next evaluation: the validation metric collapsed to half its best before
    if "val_metric" in ev and ev.get("higher_is_better"):
        vs, vv = c.get(ev["val_metric"])
        best_before = max((v for s, v in zip(vs, vv, strict=True) if s <= onset), default=math.nan)
        after = [v for s, v in zip(vs, vv, strict=True) if s > onset]
        ev["val_best_before_onset"] = r(best_before)
        ev["val_first_after_onset"] = r(after[0]) if after else None
        if after and math.isfinite(best_before) and after[0] <= 0.5 * best_before:
            return True, ""
    return False, "no NaN or 5x spike within 10 steps of the corrupted batch, no collapse after it"


def j_vanish(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    g = c.first(GRAD)
    if g:
        ev["grad_norm_median"] = r(med(c.get(g)[1]))
    ok, why = j_no_progress(entry, c, ev)
    if ok or at_chance(entry, ev):
        return True, ""
    return False, why


def j_wrong_loss(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    k = CLASSES[entry["dataset"]]
    floor = math.log(1 + (k - 1) / math.e)  # softmax of probabilities: the loss cannot go lower
    ev["loss_floor_possible"] = r(floor)
    ev["final_good"] = good_final(entry, ev)
    if float(ev["loss_min"]) >= 0.9 * floor:
        return True, ""
    return False, "the loss went below what a softmax-before-cross-entropy allows"


def j_overfit(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    vl = val_loss(c)
    if not vl:
        return False, "no validation loss"
    _, vsteps, v = vl
    fin = finite(v)
    best = fin.index(min(fin))
    run = longest = 0
    for a, b in zip(v[best:], v[best + 1 :], strict=False):
        run = run + 1 if b > a else 0
        longest = max(longest, run)
    _, tsteps, t = train_loss(c)
    at_best = med([x for s, x in zip(tsteps, t, strict=True) if s <= vsteps[best]][-5:])
    ev["val_loss_best_eval"] = best
    ev["val_loss_final_over_best"] = r(v[-1] / max(1e-12, v[best]))
    ev["val_rises_in_a_row"] = longest
    ev["train_loss_end_over_at_best"] = r(float(ev["loss_end"]) / max(1e-12, at_best))
    if ev["val_loss_final_over_best"] >= 1.1 and longest >= 3 and ev["train_loss_end_over_at_best"] < 0.9:
        return True, ""
    name = c.first(TRAIN_ACC)  # or memorised: train accuracy far above validation accuracy
    if name and "val_final" in ev:
        ev["train_minus_val_acc"] = r(tail(c.get(name)[1], 0.2) - float(ev["val_final"]))
        if float(ev["train_minus_val_acc"]) >= 0.3 and float(ev["loss_end"]) < 0.1 * float(ev["loss_start"]):
            return True, ""
    return False, "validation loss did not rise while the training loss fell, nor a 0.3 accuracy gap"


def j_exploding(entry: dict[str, Any], c: Curves, ev: dict[str, Any]) -> tuple[bool, str]:
    g = c.first(GRAD)
    if g:
        vals = c.get(g)[1]
        ev["grad_norm_max_over_median"] = r(max(finite(vals), default=math.nan) / max(1e-12, med(vals)))
        ev["grad_nan"] = any(not math.isfinite(x) for x in vals)
    ev["diverged"] = diverged(ev)
    if ev["diverged"] or ev.get("grad_nan") or float(ev.get("grad_norm_max_over_median", 0)) >= 20:
        return True, ""
    return False, "no NaN, no 3x loss rise, no 20x gradient burst"


JUDGES = {
    "healthy": j_healthy,
    "lr_high": j_lr_high,
    "lr_low": j_no_progress,
    "no_zero_grad": j_no_zero_grad,
    "unshuffled": j_unshuffled,
    "frozen_backbone": j_underfit,
    "unnormalised": j_unnormalised,
    "label_noise": j_label_noise,
    "rare_class": j_rare_class,
    "slow_loader": j_slow,
    "corrupt_nan": j_corrupt,
    "corrupt_huge": j_corrupt,
    "sigmoid_deep": j_vanish,
    "dying_relu": j_vanish,
    "tiny_model": j_underfit,
    "wrong_loss": j_wrong_loss,
    "overfit": j_overfit,
    "exploding": j_exploding,
}


def tables() -> str:
    """Markdown: runs per writer and task (healthy / faulty), and runs per fault and writer."""
    entries = [e for m in sorted(RUNS.glob("*/manifest.json")) for e in json.loads(m.read_text())["runs"]]
    writers = sorted({e["writer"] for e in entries})
    task_names = ["classification", "segmentation", "keypoints", "detection"]
    lines = ["| writer | " + " | ".join(task_names) + " | all |", "| --- |" + " ---: |" * 5]
    for w in [*writers, "all"]:
        mine = [e for e in entries if w in ("all", e["writer"])]
        cells = []
        for t in [*task_names, None]:
            sel = [e for e in mine if t in (None, e["task"])]
            h = sum(e["label"] == "healthy" for e in sel)
            cells.append(f"{h} / {len(sel) - h}" if sel else "-")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    faults = sorted({e["label"] for e in entries} - {"healthy"})
    lines += [
        "",
        "| fault | " + " | ".join(writers) + " | all | tasks | expect |",
        "| --- |" + " ---: |" * (len(writers) + 1) + " --- | --- |",
    ]
    for f in ["healthy", *faults]:
        sel = [e for e in entries if e["label"] == f]
        counts = [str(sum(e["writer"] == w for e in sel) or "-") for w in writers]
        tasks = ", ".join(sorted({e["task"] for e in sel}))
        expect = ", ".join(sel[0]["expect"]) if f != "healthy" else "(none)"
        lines.append(f"| {f} | " + " | ".join(counts) + f" | {len(sel)} | {tasks} | {expect} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writer", nargs="+")
    parser.add_argument("--verbose", action="store_true", help="print the evidence of every run")
    parser.add_argument("--table", action="store_true", help="print the README's tables of runs, then stop")
    parser.add_argument("--update", action="store_true", help="write each run's evidence into its manifest")
    args = parser.parse_args()
    if args.table:
        print(tables())
        return 0
    failures = total = 0
    for manifest in sorted(RUNS.glob("*/manifest.json")):
        spec = json.loads(manifest.read_text())
        if args.writer and spec["writer"] not in args.writer:
            continue
        twins: dict[str, list[float]] = {}  # healthy runs' final metric per data set: the fault's twin
        for entry in spec["runs"]:
            path = manifest.parent / entry["file"]
            if entry["label"] == "healthy" and path.exists():
                final = judge(entry, load(path)).evidence.get("val_final")
                if final is not None:
                    twins.setdefault(entry["dataset"], []).append(float(final))
        for entry in spec["runs"]:
            total += 1
            path = manifest.parent / entry["file"]
            if not path.exists():
                print(f"FAIL {spec['writer']}/{entry['file']}: listed in the manifest but missing")
                failures += 1
                continue
            twin = twins.get(entry["dataset"])
            verdict = judge(entry, load(path), statistics.median(twins[entry["dataset"]]) if twin else None)
            mark = "ok  " if verdict.ok else "FAIL"
            print(
                f"{mark} {spec['writer']}/{entry['file']} [{entry['label']}]: {verdict.headline}"
                + (f" -- {verdict.reason}" if verdict.reason else "")
            )
            if args.verbose:
                print("     " + json.dumps(verdict.evidence))
            failures += not verdict.ok
            entry["evidence"] = verdict.evidence
        if args.update:
            manifest.write_text(json.dumps(spec, indent=1) + "\n")
    print(f"{total - failures}/{total} labels supported by their runs' numbers")
    return 1 if failures or not total else 0


if __name__ == "__main__":
    sys.exit(main())
