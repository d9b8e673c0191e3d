"""Hugging Face Transformers: a `TrainerCallback` that streams the Trainer's logs and obeys the commands.

    from trainpilot.integrations.huggingface import TrainpilotCallback

    args = TrainingArguments(output_dir="out", report_to="none", logging_steps=10)
    trainer = Trainer(model, args, train_dataset=train, callbacks=[TrainpilotCallback(project="vit")])

What the Trainer logs goes to the run under the Trainer's own names (``loss``, ``learning_rate``,
``grad_norm``, ``eval_loss``, ``epoch``...) at `state.global_step`. At the end of every optimizer step,
on every process, pause blocks, stop ends training at that step, checkpoint has the Trainer save
``<output_dir>/checkpoint-<step>`` as its own saves are named, and set_lr pins every param group over
the schedule. Under torchrun every process runs the callbacks, and the SDK makes them share one run.

``report_to="trainpilot"`` is not offered: transformers picks those callbacks from a module-level
table with no registration API, and builds them without arguments.
"""

from __future__ import annotations

import os
from typing import Any

from trainpilot.extras import extra
from trainpilot.integrations.steering import Steering, jsonable, pin_torch_lr, start
from trainpilot.sdk.run import Run

with extra("huggingface", "trainpilot.integrations.huggingface"):
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class TrainpilotCallback(TrainerCallback):
    """One run per `Trainer.train()`, made from `project`, `name` and `init_kwargs` (server=, serve=,
    token=, data_dir=... as `trainpilot.init` takes them), or the one passed as `run=`, which is the
    user's: it is neither finished here nor dropped after training, so a later `trainer.evaluate()`
    still logs to it.

    A run this callback made is finished in `on_train_end`: ``stopped`` after a stop command, else
    ``finished``. The Trainer has no hook for an exception, so a crash leaves the run to the SDK's
    exit handler, which marks it ``failed`` when the interpreter ends on an uncaught exception.
    """

    def __init__(
        self,
        project: str = "default",
        name: str | None = None,
        *,
        run: Run | None = None,
        system_every_s: float = 10.0,
        **init_kwargs: Any,
    ) -> None:
        self._project = project
        self._run_name = name
        self._run = run
        self._system_every_s = system_every_s
        self._init_kwargs = init_kwargs
        self.steering: Steering | None = None
        self._owned = False
        # the Trainer's objects as the latest hook saw them: the checkpoint command works through them
        self._args: TrainingArguments | None = None
        self._state: TrainerState | None = None
        self._control: TrainerControl | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self._args, self._state, self._control = args, state, control
        config = _config(args, model)
        run, owned = start(self._run, self._project, self._run_name, config, self._init_kwargs)
        if not owned and state.is_world_process_zero:  # the user's run was made without them
            run.log_event("log", {"text": "Trainer arguments and model config", "hparams": jsonable(config)})
        # the Trainer hands its callbacks the optimizer accelerate wrapped, whose param_groups are the
        # torch optimizer's, and the scheduler it reads the logged `learning_rate` from
        optimizer = kwargs.get("optimizer")
        scheduler = _unwrapped(kwargs.get("lr_scheduler"))

        def set_lr(lr: float) -> None:
            pin_torch_lr([optimizer], [scheduler] if scheduler is not None else [], lr)

        self.steering = Steering(
            run,
            set_lr=set_lr if optimizer is not None else None,
            checkpoint_path=self._checkpoint_path,
            save=self._save,
            owned=owned,
            system_every_s=self._system_every_s,
        )
        self._owned = owned

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """After the optimizer and the scheduler stepped and `global_step` counts this step, before the
        Trainer logs, evaluates and saves for it: a pinned lr goes back over the scheduler's here, so
        the next step uses it and logs it as its `learning_rate` (this step's was read before)."""
        if self.steering is None:
            return
        self._args, self._state, self._control = args, state, control
        if self.steering.boundary(state.global_step):
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero:
            self._log(logs or {}, state.global_step)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """`Trainer.evaluate` has passed these metrics to `on_log` already; only what that did not log
        (a subclass's evaluate that skips `self.log`) is logged here."""
        if state.is_world_process_zero:
            self._log(metrics or {}, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.steering is not None:
            self.steering.end()
            if self._owned:
                self.steering = None  # finished: later logs (a trainer.evaluate()) have no run to go to

    def _log(self, values: dict[str, Any], step: int) -> None:
        if self.steering is not None:
            self.steering.log_once(values, step)

    def _checkpoint_path(self) -> str:
        """The folder `Trainer._save_checkpoint` writes for this step (under a hyperparameter search the
        Trainer puts it in a trial's subfolder instead)."""
        assert self._args is not None and self._state is not None
        folder = self._args.output_dir or "trainer_output"  # the Trainer's default, set in __post_init__
        return os.path.join(folder, f"{PREFIX_CHECKPOINT_DIR}-{self._state.global_step}")

    def _save(self, path: str) -> None:
        """Ask the Trainer to save at this step: it does once `on_step_end` returns, before the next step
        (whatever `save_strategy` says; on every process under torchrun, as its save needs), into
        `path`. The acknowledgement, sent here, comes a moment before the folder exists."""
        assert self._control is not None
        self._control.should_save = True


def _unwrapped(scheduler: Any) -> Any:
    """The torch scheduler: accelerate's `AcceleratedScheduler` (under DeepSpeed) keeps it in `.scheduler`."""
    inner = getattr(scheduler, "scheduler", None)
    return inner if inner is not None and hasattr(inner, "get_last_lr") else scheduler


def _config(args: TrainingArguments, model: Any) -> dict[str, Any]:
    """The TrainingArguments as the Trainer's own loggers record them, and the model's HF config."""
    config: dict[str, Any] = dict(args.to_sanitized_dict())
    model_config = getattr(model, "config", None)
    to_dict = getattr(model_config, "to_dict", None)
    if callable(to_dict):
        config["model"] = to_dict()
    return config
