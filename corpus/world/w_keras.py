"""Writer ``keras``: real Keras 3 on the torch backend, logged by its `CSVLogger`.

Keras's TensorBoard callback needs TensorFlow (``import tensorflow.summary``: ModuleNotFoundError
without it), so the record is what a Keras user without TensorFlow has: one row per epoch with
``loss``, ``accuracy`` (or ``mae``), ``val_loss``, ``val_accuracy``, ``learning_rate`` (from a
`LearningRateScheduler`), at step = epoch, as Keras's own logs count. `TerminateOnNaN` is on, as
in most Keras scripts. Faults are Keras-shaped: ``shuffle=False`` on class-sorted arrays, a
softmax output with ``from_logits=True``, ``bias_initializer`` far negative, a frozen base.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from corpus.world import runio
from corpus.world.cases import Case, faulty, healthy
from corpus.world.data import make

WRITER = "keras"


def build(case: Case, shape: tuple[int, ...], outputs: int, task: str) -> keras.Model:
    act = case.act
    bias = keras.initializers.Constant(case.fault["dead_bias"]) if "dead_bias" in case.fault else "zeros"
    width = case.width
    inputs = keras.Input(shape)
    x = inputs
    if case.aug:
        x = keras.layers.RandomTranslation(0.12, 0.12, fill_mode="nearest")(x)
        if case.aug == "heavy_aug":
            x = keras.layers.GaussianNoise(0.5)(x)
    if case.model == "cnn":
        for i in range(case.depth):
            x = keras.layers.Conv2D(width * (1 + i), 3, padding="same", bias_initializer=bias)(x)
            if case.norm:
                x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation(act)(x)
            if i % 2:
                x = keras.layers.MaxPooling2D()(x)
        base_out = (
            keras.layers.Flatten()(x) if task == "keypoints" else keras.layers.GlobalAveragePooling2D()(x)
        )
    else:
        x = keras.layers.Flatten()(x)
        for _ in range(case.depth):
            x = keras.layers.Dense(width * 8, bias_initializer=bias)(x)
            if case.norm:
                x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation(act)(x)
        base_out = x
    base = keras.Model(inputs, base_out)
    if case.fault.get("frozen_backbone"):
        base.trainable = False
    y = base.output
    if case.dropout:
        y = keras.layers.Dropout(case.dropout)(y)
    softmax = task == "classification" and case.fault.get("wrong_loss")
    y = keras.layers.Dense(outputs, activation="softmax" if softmax else None)(y)
    return keras.Model(inputs, y)


def record(case: Case, work: Path) -> list[runio.Event]:
    keras.utils.set_random_seed(case.seed)
    data = make(case.dataset, case.seed, case.fault)
    tx, vx = (t.numpy().transpose(0, 2, 3, 1) for t in (data.train_x, data.val_x))
    ty, vy = data.train_y.numpy(), data.val_y.numpy()
    outputs = data.num_classes if data.task == "classification" else ty.shape[1]
    model = build(case, tx.shape[1:], outputs, data.task)
    if data.task == "classification":
        if case.label_smoothing:
            ty, vy = np.eye(outputs)[ty], np.eye(outputs)[vy]
            loss: Any = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=case.label_smoothing
            )
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = ["accuracy"]
    else:
        loss, metrics = "mse", ["mae"]
    opt = {
        "sgd": lambda: keras.optimizers.SGD(case.lr, momentum=0.9),
        "adam": lambda: keras.optimizers.Adam(case.lr),
        "adamw": lambda: keras.optimizers.AdamW(case.lr, weight_decay=case.weight_decay or 0.004),
        "rmsprop": lambda: keras.optimizers.RMSprop(case.lr),
    }[case.optimizer]()
    model.compile(optimizer=opt, loss=loss, metrics=metrics)

    def lr_at(epoch: int, lr: float) -> float:
        if case.schedule == "cosine":
            return case.lr * 0.5 * (1 + math.cos(math.pi * epoch / case.epochs))
        if case.schedule == "step":
            return case.lr * 0.1 ** ((epoch >= case.epochs // 2) + (epoch >= 3 * case.epochs // 4))
        return case.lr

    log = work / "log.csv"
    model.fit(
        tx,
        ty,
        validation_data=(vx, vy),
        epochs=case.epochs,
        batch_size=case.batch,
        shuffle=not case.fault.get("sorted"),
        verbose=0,
        callbacks=[
            keras.callbacks.LearningRateScheduler(lr_at),
            keras.callbacks.CSVLogger(str(log)),
            keras.callbacks.TerminateOnNaN(),
        ],
    )
    with log.open() as f:
        rows = list(csv.DictReader(f))
    return runio.from_rows(rows, "epoch", time.time(), skip=("epoch",))


def cases() -> list[Case]:
    def c(dataset: str, model: str, **kw: Any) -> Case:
        base = {
            "optimizer": "adam",
            "lr": 1e-3,
            "schedule": "none",
            "epochs": 10,
            "batch": 64,
            "weight_decay": 0.0,
        }
        return Case(WRITER, dataset, model, **{**base, **kw})

    kp = c("keypoints", "cnn", epochs=15)
    out = [
        healthy(c("digits", "cnn"), "base"),
        healthy(c("textures", "cnn", dropout=0.3), "dropout"),
        healthy(c("digits", "mlp", optimizer="sgd", lr=0.02, schedule="step"), "step_decay"),
        healthy(c("digits", "cnn"), "label_smoothing"),
        healthy(c("textures", "cnn", schedule="cosine"), "aug"),
        faulty(c("digits", "cnn", optimizer="sgd", lr=0.05), "lr_high"),
        faulty(c("textures", "cnn", optimizer="sgd", lr=0.02), "lr_low"),
        faulty(c("digits", "cnn"), "unshuffled"),
        faulty(c("digits", "mlp"), "unnormalised"),
        faulty(c("digits", "cnn"), "label_noise"),
        faulty(c("digits", "cnn"), "wrong_loss"),
        faulty(c("textures", "cnn"), "tiny_model"),
        faulty(c("textures", "mlp"), "overfit"),
        faulty(c("digits", "mlp"), "sigmoid_deep"),
        faulty(kp, "lr_high"),
        faulty(c("textures", "cnn"), "dying_relu"),
    ]
    for i, case in enumerate(out):
        case.seed = 500 + i
        case.epochs = min(case.epochs, 50)
    return out
