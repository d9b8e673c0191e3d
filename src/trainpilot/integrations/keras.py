"""Keras 3: a `keras.callbacks.Callback` that streams `fit()`'s logs and obeys the run's commands.

    from trainpilot.integrations.keras import TrainpilotCallback

    model.fit(x, y, validation_data=(xv, yv), epochs=10, callbacks=[TrainpilotCallback(project="digits")])

What `fit()` logs goes to the run under Keras's own names (``loss``, ``accuracy``, ``val_loss``...):
the training metrics after every batch (Keras's running means over the epoch), the validation ones at
the end of each epoch, at the optimizer's step count, with the ``learning_rate`` in use. At the end of
every batch pause blocks, stop ends `fit()` there, checkpoint saves the whole model as
``<checkpoint_dir>/<run id>-step<step>.keras`` and set_lr pins the optimizer's rate over its schedule
(a `LearningRateSchedule`, or a callback such as `LearningRateScheduler` that sets it each epoch).

Keras reads its backend when it is first imported: importing this module before Keras picks the torch
backend unless ``KERAS_BACKEND`` says otherwise, so no TensorFlow is needed. The callback uses Keras's
backend-neutral API only; it is tested on torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from trainpilot.extras import extra
from trainpilot.integrations.steering import Steering, jsonable, start
from trainpilot.sdk.run import Run

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")

with extra("keras", "trainpilot.integrations.keras"):
    import keras


@keras.saving.register_keras_serializable(package="trainpilot")
class PinnedRate(keras.optimizers.schedules.LearningRateSchedule):
    """The rate a set_lr command gave, put in place of a `LearningRateSchedule`, whose own rate cannot
    be set; registered, so a model saved with it loads again."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = float(learning_rate)

    def __call__(self, step: Any) -> Any:
        return keras.ops.convert_to_tensor(self.learning_rate, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


class TrainpilotCallback(keras.callbacks.Callback):
    """One run per `fit()`, made from `project`, `name`, `config` and `init_kwargs` (server=, serve=,
    token=, data_dir=... as `trainpilot.init` takes them), or the one passed as `run=`, which is the
    user's and is neither finished nor dropped here.

    A run this callback made is finished in `on_train_end`: ``stopped`` after a stop command, else
    ``finished``. Keras has no hook for an exception, so a crash leaves the run to the SDK's exit
    handler, which marks it ``failed`` when the interpreter ends on an uncaught exception.
    """

    def __init__(
        self,
        project: str = "default",
        name: str | None = None,
        *,
        run: Run | None = None,
        config: dict[str, Any] | None = None,
        checkpoint_dir: str = "checkpoints",
        system_every_s: float = 10.0,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        self._project = project
        self._run_name = name
        self._run = run
        self._config = dict(config or {})
        self._checkpoint_dir = checkpoint_dir
        self._system_every_s = system_every_s
        self._init_kwargs = init_kwargs
        self.steering: Steering | None = None
        self._step = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        config = {**_config(self.model, self.params), **self._config}
        run, owned = start(self._run, self._project, self._run_name, config, self._init_kwargs)
        if not owned:  # the user's run was made without them
            run.log_event("log", {"text": "Keras model and fit() settings", "hparams": jsonable(config)})
        self.steering = Steering(
            run,
            set_lr=self._set_lr,
            checkpoint_path=self._checkpoint_path,
            save=self._save,
            owned=owned,
            system_every_s=self._system_every_s,
        )
        self._step = self._iterations()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """A pinned lr goes back over whatever an epoch's callback (`LearningRateScheduler`,
        `ReduceLROnPlateau`) set before this batch."""
        if self.steering is not None:
            self.steering.hold_lr()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.steering is None:
            return
        self._step = self._iterations()
        self.steering.log_once({**(logs or {}), "learning_rate": self._lr()}, self._step)
        if self.steering.boundary(self._step):
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """The validation metrics; the training ones equal the last batch's, logged already."""
        if self.steering is not None:
            self.steering.log_once({**(logs or {}), "epoch": epoch + 1}, self._step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.steering is not None:
            self.steering.end()
            self.steering = None

    def _iterations(self) -> int:
        """The optimizer's step count: with ``steps_per_execution`` a batch callback covers several."""
        return int(_number(self.model.optimizer.iterations))

    def _lr(self) -> float:
        return _number(self.model.optimizer.learning_rate)

    def _set_lr(self, lr: float) -> None:
        """Assign a plain rate; a schedule cannot be assigned to, so a `PinnedRate` takes its place."""
        optimizer = self.model.optimizer
        try:
            optimizer.learning_rate = lr
        except TypeError:  # "created with a LearningRateSchedule ... not settable"
            optimizer.learning_rate = PinnedRate(lr)

    def _checkpoint_path(self) -> str:
        assert self.steering is not None
        return str(Path(self._checkpoint_dir) / f"{self.steering.run.id}-step{self._step}.keras")

    def _save(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.model.save(path)


def _number(value: Any) -> float:
    """A Keras variable's or a backend tensor's one number: `.item()` where the tensor has it (torch,
    jax, numpy; numpy's copy protocol warns on a torch Parameter), else through numpy."""
    if isinstance(value, keras.Variable):
        value = value.value
    item = getattr(value, "item", None)
    return float(item() if callable(item) else keras.ops.convert_to_numpy(value))


def _config(model: Any, params: dict[str, Any] | None) -> dict[str, Any]:
    """What a run of `fit()` is: its settings (epochs, steps per epoch), the optimizer's config, the
    model's name and size, and the loss it was compiled with."""
    config: dict[str, Any] = {key: value for key, value in (params or {}).items() if key != "verbose"}
    config["model"] = getattr(model, "name", type(model).__name__)
    try:
        config["parameters"] = int(model.count_params())
    except ValueError:  # a model not built yet has no count
        pass
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        config["optimizer"] = {**optimizer.get_config(), "class": type(optimizer).__name__}
    loss = getattr(model, "loss", None)
    if loss is not None:
        config["loss"] = loss if isinstance(loss, str) else getattr(loss, "name", type(loss).__name__)
    out: dict[str, Any] = jsonable(config)
    return out
