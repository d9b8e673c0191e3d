"""The detectors' reasoning on small synthetic curves, one behaviour each (the corpus judges them on
real runs: tests/test_analysis_corpus.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from trainpilot.analysis import analyze_events
from trainpilot.analysis.classes import classes_from_config, classes_from_start, regularised
from trainpilot.analysis.names import per_class, role, time_scale
from trainpilot.analysis.rates import Rate
from trainpilot.analysis.trend import kendall_tau

NO_POLICY: dict[str, str] = {}  # the detectors' own severities, before the policy caps them


def kinds(events: list[dict[str, Any]], **options: Any) -> list[str]:
    return [f.kind for f in analyze_events(events, policy=options.pop("policy", NO_POLICY), **options)]


def steps(rows: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [{"kind": "metrics", "step": i, "data": row} for i, row in enumerate(rows)]


def test_the_class_count_comes_from_the_config_however_it_is_written() -> None:
    assert classes_from_config({"num_classes": 10}) == 10
    assert classes_from_config({"model": {"head": {"nc": 80}}}) == 80
    assert classes_from_config({"id2label": {"0": "cat", "1": "dog", "2": "bird"}}) == 3
    assert classes_from_config({"classes": ["a", "b"]}) == 2
    assert classes_from_config({"num_classes": True, "lr": 0.1}) is None


def test_an_initial_loss_of_ln_c_gives_c_only_when_an_early_accuracy_confirms_it() -> None:
    assert classes_from_start(math.log(10), early_accuracy=0.11) == 10
    assert classes_from_start(math.log(10), early_accuracy=None) is None  # a segmentation loss at 2.3
    assert classes_from_start(math.log(10), early_accuracy=0.6) is None  # not an untrained classifier


def test_per_class_accuracies_are_found_under_any_writers_name() -> None:
    for name, cls in [
        ("val/acc/cat", "cat"),
        ("val_acc/3", "3"),
        ("Accuracy/val/3", "3"),
        ("val_acc_class_3", "3"),
        ("class_0_acc_val", "0"),
        ("val_accuracy", None),
        ("val_acc_macro", None),
        ("train/acc/3", None),
        ("acc/top5", None),
    ]:
        assert per_class(name) == cls, name


def test_data_and_step_times_are_found_under_other_names_and_units() -> None:
    assert (
        role("dataloader_ms").quantity == role("t_data").quantity == role("time/data").quantity == "data_time"
    )
    assert role("iter_ms").quantity == role("batch_time").quantity == "step_time"
    assert time_scale("dataloader_ms") == 1e-3 and time_scale("data_time") == 1.0


def test_regularisers_are_read_from_keys_and_values() -> None:
    assert regularised({"label_smoothing": 0.1}) and regularised({"augmentation": "mixup"})
    assert not regularised({"label_smoothing": 0.0, "augmentation": "flip"})


def test_rank_trend() -> None:
    assert kendall_tau([1, 2, 3, 4, 5]) == 1.0
    assert kendall_tau([5, 1, 4, 2, 3]) < 0.5


def diverging(lr: float = 1.0) -> list[dict[str, Any]]:
    rows = [{"train/loss": 2.3 * 1.08**i, "lr": lr, "grad_norm": 1.0 * 1.3**i} for i in range(80)]
    return steps(rows)


def test_one_cause_is_one_finding_a_divergence_is_not_also_spikes_and_a_plateau() -> None:
    found = kinds(diverging())
    assert found[0] == "lr_too_high"
    assert not set(found) & {"divergence", "loss_spike", "oscillation", "plateau", "exploding_gradient"}


def test_a_far_too_high_learning_rate_is_flagged_within_a_few_dozen_steps() -> None:
    (finding, *_) = analyze_events(diverging(), policy=NO_POLICY)
    assert finding.kind == "lr_too_high" and finding.severity == "critical" and finding.step is not None
    assert finding.step <= 30 and "lower" in finding.suggestion


@pytest.mark.parametrize(
    ("lr", "optimiser", "verdict"),
    [
        (0.05, "sgd", "usual"),
        (10.0, "sgd", "high"),
        (5e-4, "sgd", "low"),
        (0.05, "adam", "high"),
        (1e-3, "adam", "usual"),
        (2e-7, "adam", "low"),
        (0.05, None, "usual"),
        (0.5, None, "high"),
        (None, "sgd", None),
    ],
)
def test_a_learning_rate_is_judged_against_its_optimisers_usual_range(
    lr: float | None, optimiser: str | None, verdict: str | None
) -> None:
    assert Rate(lr, optimiser).verdict == verdict


def test_an_early_blow_up_at_a_usual_rate_is_a_divergence_that_suspects_the_gradients_first() -> None:
    """SGD at 0.05 does not blow a loss up by itself: gradients never zeroed (they add up) do."""
    (finding, *_) = analyze_events(diverging(lr=0.05), config={"optimizer": "SGD"}, policy=NO_POLICY)
    assert finding.kind == "divergence" and finding.severity == "critical"
    assert "within SGD's usual 0.001-0.5" in finding.message
    assert finding.suggestion.startswith("check that the gradients are zeroed every step")
    # the same at SGD lr 10 is the learning rate
    (high, *_) = analyze_events(diverging(lr=10.0), config={"optimizer": "SGD"}, policy=NO_POLICY)
    assert high.kind == "lr_too_high" and high.suggestion.startswith("lower the learning rate 10x")


def test_a_usual_rate_blow_up_that_started_far_above_ln_c_suspects_the_inputs_first() -> None:
    rows = [{"train/loss": 30.0 * 1.08**i, "lr": 0.05} for i in range(80)]
    found = analyze_events(steps(rows), config={"optimizer": "sgd", "num_classes": 10}, policy=NO_POLICY)
    (blew,) = [f for f in found if f.kind == "divergence"]
    assert blew.suggestion.startswith("normalise the inputs")


@pytest.mark.parametrize(
    ("optimiser", "lr", "kind", "first_fix"),
    [
        ("adam", 2e-7, "lr_too_low", "raise the learning rate 10x (to 2e-06)"),  # it explains the rest
        ("adam", 0.05, "stuck_at_chance", "lower the learning rate 10x (to 0.005)"),
        ("adam", 0.05, "lr_too_low", "lower the learning rate 10x (to 0.005)"),
        ("sgd", 0.05, "stuck_at_chance", "add batch normalisation, use ReLU-family activations"),
        ("sgd", None, "stuck_at_chance", "check that the labels match the inputs"),
    ],
)
def test_a_loss_flat_at_chance_orders_its_fixes_by_the_learning_rate(
    optimiser: str, lr: float | None, kind: str, first_fix: str
) -> None:
    rows = [
        {"train/loss": math.log(10) + 0.001 * (-1) ** i, **({"lr": lr} if lr is not None else {})}
        for i in range(300)
    ]
    found = analyze_events(steps(rows), config={"optimizer": optimiser, "num_classes": 10}, policy=NO_POLICY)
    (finding,) = [f for f in found if f.kind == kind]
    assert finding.suggestion.startswith(first_fix), finding.suggestion


def val_curve(val_loss: list[float], val_acc: list[float], train_end: float = 0.01) -> list[dict[str, Any]]:
    """Ten steps of falling training loss per evaluation, then the evaluation."""
    events = []
    step = 0
    for loss, acc in zip(val_loss, val_acc, strict=True):
        for _ in range(10):
            train = 2.3 * (train_end / 2.3) ** (step / (10 * len(val_loss)))
            events.append({"kind": "metrics", "step": step, "data": {"train/loss": train, "train/acc": 0.99}})
            step += 1
        events.append({"kind": "metrics", "step": step, "data": {"val/loss": loss, "val/acc": acc}})
        step += 1
    return events


def test_a_validation_loss_drifting_up_while_accuracy_rises_is_not_overfitting() -> None:
    drift = val_curve([1.5, 0.6, 0.40, 0.41, 0.42, 0.43, 0.44], [0.5, 0.8, 0.86, 0.87, 0.88, 0.885, 0.89])
    assert "overfitting" not in kinds(drift, config={"num_classes": 10})


def test_a_validation_loss_that_keeps_climbing_while_accuracy_stalls_is_overfitting() -> None:
    rising = val_curve([1.5, 0.6, 0.40, 0.55, 0.75, 0.95, 1.2], [0.5, 0.8, 0.86, 0.85, 0.84, 0.83, 0.82])
    assert "overfitting" in kinds(rising, config={"num_classes": 10})


def noisy_accuracy(val: float = 0.9, train: float = 0.5) -> list[dict[str, Any]]:
    events = []
    for epoch in range(8):
        for i in range(20):
            step = epoch * 21 + i
            events.append({"kind": "metrics", "step": step, "data": {"train/acc": train, "train/loss": 1.5}})
        events.append({"kind": "metrics", "step": epoch * 21 + 20, "data": {"val/acc": val}})
    return events


def test_training_accuracy_far_below_validation_is_noisy_labels_unless_mixup_or_smoothing_explains_it() -> (
    None
):
    assert "noisy_labels" in kinds(noisy_accuracy())
    assert "noisy_labels" not in kinds(noisy_accuracy(), config={"mixup": 0.2})
    assert "noisy_labels" not in kinds(noisy_accuracy(train=0.85))


@pytest.mark.parametrize(("lr", "severity"), [(1e-7, "warning"), (0.05, "info")])
def test_a_flat_loss_blames_the_learning_rate_only_when_it_is_far_below_any_usual_range(
    lr: float, severity: str
) -> None:
    rows = [{"train/loss": 2.3 - 1e-5 * i, "lr": lr, "grad_norm": 1.0} for i in range(200)]
    (finding,) = [f for f in analyze_events(steps(rows), policy=NO_POLICY) if f.kind == "lr_too_low"]
    assert finding.severity == severity


def test_accuracies_logged_in_percent_are_fractions_to_the_detectors() -> None:
    events = []
    for epoch in range(10):
        for i in range(30):
            events.append(
                {"kind": "metrics", "step": epoch * 31 + i, "data": {"loss": 2.08 + 0.01 * (i % 3)}}
            )
        events.append(
            {"kind": "metrics", "step": epoch * 31 + 30, "data": {"eval_top1": 12.5, "epoch": epoch}}
        )
    found = analyze_events(events, config={"num_classes": 8}, policy=NO_POLICY)
    assert "stuck_at_chance" in {f.kind for f in found}


def test_a_non_finite_gradient_norm_with_a_finite_loss_is_only_a_warning() -> None:
    rows = [{"train/loss": 1.0, "grad_norm": 1.0} for _ in range(10)]
    rows[5]["grad_norm"] = math.inf  # a mixed-precision step the loss scaler skipped
    (amp,) = analyze_events(steps(rows), policy=NO_POLICY)
    assert (amp.kind, amp.severity, amp.step) == ("nan_inf", "warning", 5)
    rows[7]["train/loss"] = math.nan
    loss = [f for f in analyze_events(steps(rows), policy=NO_POLICY) if f.step == 7]
    assert loss[0].severity == "critical"


def test_batches_of_one_class_are_unshuffled_data_not_a_learning_rate_problem() -> None:
    rows = []
    for i in range(200):
        block = i % 20  # each class for 20 batches: the loss jumps as a new class starts
        rows.append({"train/loss": 2.3 + 2.0 * math.exp(-block / 4), "train/acc": 0.0, "lr": 0.05})
    found = kinds(steps(rows), config={"num_classes": 10})
    assert found[0] == "unshuffled_data" and "lr_too_high" not in found


def test_the_policy_caps_a_kind_that_was_not_precise_enough_on_held_out_runs() -> None:
    rows = [{"train/loss": 1.0 + (5.0 if i == 60 else 0.0) + 0.01 * (i % 2)} for i in range(100)]
    (spike,) = [
        f for f in analyze_events(steps(rows), policy={"loss_spike": "info"}) if f.kind == "loss_spike"
    ]
    assert (spike.kind, spike.severity) == ("loss_spike", "info")
