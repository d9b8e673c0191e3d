"""trainpilot inside the training loops CV engineers already use, with control, not only logging.

Each module is a framework's own extension point and imports its framework only when used:

    lightning     `TrainpilotLogger` (Lightning's Logger API) and `TrainpilotCallback` (commands)
    huggingface   `TrainpilotCallback`, a `transformers.TrainerCallback`
    ultralytics   `add_callbacks(model)`: Ultralytics YOLO's own callbacks (``model.add_callback``)
    keras         `TrainpilotCallback`, a `keras.callbacks.Callback` (Keras 3, torch backend)

All of them stream metrics, config and system load, and apply the run's commands at batch boundaries
through one `Steering` (steering.py): pause blocks the loop, stop ends it at that batch, checkpoint
saves with the framework's own call, set_lr pins every optimizer's rate over its schedule.
"""
