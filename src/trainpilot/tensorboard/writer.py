"""A drop-in `SummaryWriter`: change one import and your TensorBoard logging also streams live.

    # from torch.utils.tensorboard import SummaryWriter
    from trainpilot.tensorboard import SummaryWriter

Same arguments, same methods (`add_scalar`, `add_scalars`, `add_image`, `add_histogram`,
`add_text`, `flush`, `close`, use as a context manager); the event files are written exactly as
torch writes them, and every scalar, image, histogram summary and text also goes to a trainpilot
run (server from ``$TRAINPILOT_SERVER``, project from ``$TRAINPILOT_PROJECT``, or pass `run=`).
Streaming never raises into your training: it is the SDK's `log()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainpilot.extras import extra
from trainpilot.sdk.run import Run, init

with extra("train", "trainpilot.tensorboard.SummaryWriter"):
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter as TorchSummaryWriter


def _array(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values)


class SummaryWriter(TorchSummaryWriter):
    def __init__(
        self,
        log_dir: str | None = None,
        comment: str = "",
        purge_step: int | None = None,
        max_queue: int = 10,
        flush_secs: int = 120,
        filename_suffix: str = "",
        *,
        run: Run | None = None,
        project: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(log_dir, comment, purge_step, max_queue, flush_secs, filename_suffix)
        self._owns_run = run is None
        self.run: Run = run or init(
            project=project or os.environ.get("TRAINPILOT_PROJECT", "tensorboard"),
            name=Path(self.log_dir).name,
            config={"log_dir": str(self.log_dir)},
            server=server,
        )

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: int | None = None,
        walltime: float | None = None,
        new_style: bool = False,
        double_precision: bool = False,
    ) -> None:
        super().add_scalar(tag, scalar_value, global_step, walltime, new_style, double_precision)
        self.run.log({tag: scalar_value}, step=global_step)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: dict[str, Any],
        global_step: int | None = None,
        walltime: float | None = None,
    ) -> None:
        super().add_scalars(main_tag, tag_scalar_dict, global_step, walltime)
        self.run.log({f"{main_tag}/{tag}": value for tag, value in tag_scalar_dict.items()}, step=global_step)

    def add_image(
        self,
        tag: str,
        img_tensor: Any,
        global_step: int | None = None,
        walltime: float | None = None,
        dataformats: str = "CHW",
    ) -> None:
        super().add_image(tag, img_tensor, global_step, walltime, dataformats)
        image = _array(img_tensor)
        if dataformats.upper() not in ("CHW", "HWC", "HW"):
            from torch.utils.tensorboard._utils import convert_to_HWC

            image = convert_to_HWC(image, dataformats)  # type: ignore[no-untyped-call]
        self.run.log_image(tag, image, step=global_step)

    def add_histogram(
        self,
        tag: str,
        values: Any,
        global_step: int | None = None,
        bins: Any = "tensorflow",
        walltime: float | None = None,
        max_bins: int | None = None,
    ) -> None:
        super().add_histogram(tag, values, global_step, bins, walltime, max_bins)
        flat = _array(values).astype(np.float64).ravel()
        flat = flat[np.isfinite(flat)]
        if flat.size:
            counts, edges = np.histogram(flat, bins=30)
            self.run.log_event(
                "media",
                {
                    "type": "histogram",
                    "tag": tag,
                    "counts": counts.tolist(),
                    "edges": edges.tolist(),
                    "mean": float(flat.mean()),
                    "std": float(flat.std()),
                },
                step=global_step,
            )

    def add_text(
        self, tag: str, text_string: str, global_step: int | None = None, walltime: float | None = None
    ) -> None:
        super().add_text(tag, text_string, global_step, walltime)
        self.run.log_event("log", {"tag": tag, "text": str(text_string)}, step=global_step)

    def close(self) -> None:
        super().close()
        if self._owns_run:
            self.run.finish()
