"""A small Keras 3 classifier of scikit-learn's digits (real 8x8 images, shipped with the package), on
the torch backend, for the integration tests."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported: no TensorFlow here

from typing import Any

import keras
import numpy as np
from sklearn.datasets import load_digits


def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    x, y = load_digits(return_X_y=True)
    images = (x / 16.0).astype("float32")
    return (images[:1500], y[:1500]), (images[1500:], y[1500:])


def model(learning_rate: Any = 0.05) -> keras.Model:
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)],
        name="digits",
    )
    net.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return net


def decaying(initial: float = 0.05) -> keras.optimizers.schedules.LearningRateSchedule:
    """A schedule that moves the rate every step, which a set_lr must win over."""
    return keras.optimizers.schedules.ExponentialDecay(initial, decay_steps=10, decay_rate=0.9)
