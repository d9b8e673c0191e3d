"""The labelled corpus the detectors are judged on: real runs, each with what is wrong with it.

A corpus is a folder holding ``manifest.json`` files (one per writer: Lightning, Hugging Face, Keras,
timm, YOLO-style, custom loops, our reference trainer ...) next to the runs they describe, one
gzipped JSON Lines file of metrics events per run. A run's label is ``healthy`` or the fault it
carries; ``expect`` lists the detector kinds a user would accept as the right diagnosis and ``onset``
the step the fault begins. `corpus/world/README.md` says how the runs were recorded and checked.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LabelledRun:
    name: str  # <writer>/<file stem>: unique in the corpus
    path: Path
    task: str
    dataset: str
    model: str
    writer: str
    label: str  # healthy, or the fault's name
    expect: frozenset[str]
    onset: int
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def healthy(self) -> bool:
        return not self.expect

    def group(self, by: str) -> str:
        """The run's group when holding groups out: its writer, its task, or both."""
        return {"writer": self.writer, "task": self.task}.get(by, f"{self.task}/{self.writer}")

    def events(self) -> list[dict[str, Any]]:
        with gzip.open(self.path, "rt") as f:
            return [json.loads(line) for line in f if line.strip()]


def load_corpus(root: Path) -> list[LabelledRun]:
    """Every run of every manifest under `root`, in a stable order."""
    runs = []
    for manifest in sorted(root.rglob("manifest.json")):
        described = json.loads(manifest.read_text())
        for entry in described["runs"]:
            path = manifest.parent / entry["file"]
            if not path.exists():
                raise FileNotFoundError(f"{manifest}: {entry['file']} is listed but missing")
            runs.append(
                LabelledRun(
                    name=f"{manifest.parent.name}/{entry['file'].removesuffix('.jsonl.gz')}",
                    path=path,
                    task=entry["task"],
                    dataset=entry["dataset"],
                    model=entry["model"],
                    writer=entry["writer"],
                    label=entry["label"],
                    expect=frozenset(entry["expect"]),
                    onset=int(entry["onset"]),
                    config=entry.get("config") or {},
                )
            )
    if not runs:
        raise FileNotFoundError(f"no manifest.json with runs under {root}")
    return runs
