"""`trainpilot watch LOGDIR`: stream every scalar of a TensorBoard log directory into trainpilot.

Non-invasive: the training program keeps writing its event files; the watcher tails them with the
`tensorboard` package's own reader (which stops at a record still being written and resumes there
once it is complete), and sends each scalar as a metrics event of a trainpilot run.

- A run is a directory holding event files. Keras/TF2 write ``<run>/train`` and ``<run>/validation``:
  those are folded into ``<run>`` with the sub-folder as a prefix (``train/epoch_loss``).
- Scalars come as ``simple_value`` (torch, tensorboardX) or as tensor summaries of the scalars
  plugin (TF2); both are read, and the plugin of a tag is remembered from its first record.
- Every record gets a seq from (a hash of the file's path, record number), so re-reading a file after
  a restart stores nothing twice; the watcher also remembers how far it read, in ``<data_dir>/watch/``,
  so it need not re-read at all. It saves that position only once everything read before it is
  delivered or in the spool (`Run.flush`): killed with -9 at any moment, it re-reads what it had not
  handed over and loses nothing.
- Images (legacy image summaries and the TF2 images plugin) go to the run as media; like every
  image they are best-effort on a restart: a re-read file sends its images again.
- Files are found only inside LOGDIR: symlinks that lead outside it are not followed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import trainpilot
from trainpilot.sdk.run import Run

log = logging.getLogger("trainpilot.tensorboard.tailer")
SPLIT_DIRS = frozenset({"train", "training", "validation", "val", "eval", "evaluation", "test"})
RECORD_BITS = 32


@dataclass
class TailedFile:
    path: Path
    ordinal: int
    run_key: str
    prefix: str
    loader: Any
    records: int = 0  # records read so far, the count a restart skips
    skip: int = 0
    plugins: dict[str, str] = field(default_factory=dict)


def run_of(rel: Path) -> tuple[str, str]:
    """(run key, metric prefix) of an event file's path relative to the log directory."""
    parts = rel.parent.parts
    if parts and parts[-1].lower() in SPLIT_DIRS:
        return "/".join(parts[:-1]) or ".", parts[-1] + "/"
    return "/".join(parts) or ".", ""


def read_logdir(logdir: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Every scalar under a log directory, as metrics events per run key (for offline analysis)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    root = Path(logdir).expanduser().resolve()
    runs: dict[str, list[dict[str, Any]]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            path = Path(dirpath) / name
            if "tfevents" not in name or not path.resolve().is_relative_to(root):
                continue
            run_key, prefix = run_of(path.relative_to(root))
            plugins: dict[str, str] = {}
            try:
                for event in EventFileLoader(str(path)).Load():
                    values = scalars(event, plugins)
                    if values:
                        data = {prefix + tag: value for tag, value in values.items()}
                        runs.setdefault(run_key, []).append(
                            {
                                "kind": "metrics",
                                "step": max(0, int(event.step)),
                                "ts": event.wall_time,
                                "data": data,
                            }
                        )
            except Exception as exc:  # a corrupt file: what was read before it counts
                log.warning("stopped reading %s: %s", path, exc)
    return runs


def run_id_for(root: Path, run_key: str) -> str:
    digest = hashlib.sha1(f"{root}\0{run_key}".encode()).hexdigest()[:10]
    return f"tb-{digest}"


class Watcher:
    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        server: str | None = None,
        project: str | None = None,
        data_dir: str = "./trainpilot-data",
        token: str | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.root = Path(logdir).expanduser().resolve()
        if not self.root.is_dir():
            raise ValueError(f"{logdir} is not a directory")
        self.server = server
        self.project = project or self.root.name
        self.data_dir = data_dir
        self.token = token
        self.poll_s = poll_s
        self.files: dict[Path, TailedFile] = {}
        self.runs: dict[str, Run] = {}
        self.sent = 0
        state_name = hashlib.sha1(str(self.root).encode()).hexdigest()[:16] + ".json"
        self.state_path = Path(data_dir) / "watch" / state_name
        self._state: dict[str, dict[str, int]] = self._load_state()
        self._stop = threading.Event()

    # -- state ------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict[str, int]]:
        try:
            state = orjson.loads(self.state_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        state = {str(f.path.relative_to(self.root)): {"records": f.records} for f in self.files.values()}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(state))
        tmp.replace(self.state_path)

    # -- finding files ------------------------------------------------------------------------------

    def scan(self) -> list[TailedFile]:
        """Event files not seen before, in name order (their names carry their creation time)."""
        found = []
        for dirpath, _dirs, names in os.walk(self.root):  # os.walk does not follow symlinked dirs
            for name in names:
                if "tfevents" not in name:
                    continue
                path = Path(dirpath) / name
                try:
                    real = path.resolve(strict=True)
                except OSError:
                    continue
                if not real.is_relative_to(self.root) or not real.is_file() or path in self.files:
                    continue
                found.append(path)
        new = [self._track(path) for path in sorted(found)]
        return new

    def _track(self, path: Path) -> TailedFile:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        rel = path.relative_to(self.root)
        saved = self._state.get(str(rel), {})
        # From the file's own path, so a watcher that lost its state numbers records the same way.
        ordinal = int(hashlib.sha1(str(rel).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
        run_key, prefix = run_of(rel)
        tailed = TailedFile(
            path, ordinal, run_key, prefix, EventFileLoader(str(path)), skip=int(saved.get("records", 0))
        )
        self.files[path] = tailed
        return tailed

    def _run(self, run_key: str) -> Run:
        run = self.runs.get(run_key)
        if run is None:
            name = self.root.name if run_key == "." else run_key
            run = trainpilot.init(
                project=self.project,
                name=name,
                run_id=run_id_for(self.root, run_key),
                config={"source": "tensorboard", "logdir": str(self.root / run_key)},
                server=self.server,
                data_dir=self.data_dir,
                token=self.token,
                control=False,
            )
            self.runs[run_key] = run
            log.info("watching run %s (%s)", name, run.id)
        return run

    # -- reading -----------------------------------------------------------------------------------

    def poll(self) -> int:
        """Read what is new in every file; return the number of scalar events sent."""
        self.scan()
        sent = 0
        for tailed in self.files.values():
            try:
                sent += self._read(tailed)
            except Exception as exc:  # a corrupt file must not stop the others
                log.warning("skipping the rest of %s: %s", tailed.path, exc)
                tailed.loader = _Exhausted()
        if sent and self._handed_over():
            self._save_state()
        self.sent += sent
        return sent

    def _handed_over(self) -> bool:
        """Whether every run has delivered or spooled what was read: only then may the position be saved."""
        return all(run.flush() for run in self.runs.values())

    def _read(self, tailed: TailedFile) -> int:
        sent = 0
        for event in tailed.loader.Load():
            index = tailed.records
            tailed.records += 1
            if index < tailed.skip:
                continue
            values = scalars(event, tailed.plugins)
            step = max(0, int(event.step))
            for tag, png in images(event, tailed.plugins):
                self._run(tailed.run_key).log_image(tailed.prefix + tag, png, step=step)
            if not values:
                continue
            data = {tailed.prefix + tag: value for tag, value in values.items()}
            seq = (tailed.ordinal << RECORD_BITS) | index
            self._run(tailed.run_key).log_recorded(data, step=step, ts=event.wall_time, seq=seq)
            sent += 1
        return sent

    def run_forever(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Deliver what was read and stop; the runs stay open for the next watcher."""
        handed_over = self._handed_over()
        for run in self.runs.values():
            run.close(timeout=30)
        if self.files and handed_over:
            self._save_state()


class _Exhausted:
    def Load(self) -> list[Any]:  # the tensorboard loader's name
        return []


def scalars(event: Any, plugins: dict[str, str]) -> dict[str, float]:
    """The scalar values of one event record: simple values, or tensors of the scalars plugin."""
    from tensorboard import data_compat
    from tensorboard.util import tensor_util

    out: dict[str, float] = {}
    if not event.HasField("summary"):
        return out
    for value in event.summary.value:
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
            plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
        if value.HasField("simple_value"):
            out[value.tag] = float(value.simple_value)
            continue
        if plugins.get(value.tag) != "scalars" or not value.HasField("tensor"):
            continue
        migrated = data_compat.migrate_value(value)
        array = tensor_util.make_ndarray(migrated.tensor)
        if array.size == 1:
            out[value.tag] = float(array.reshape(()))
    return out


def images(event: Any, plugins: dict[str, str]) -> list[tuple[str, bytes]]:
    """Encoded images of one record: legacy image summaries, or tensors of the images plugin (TF2)."""
    out: list[tuple[str, bytes]] = []
    if not event.HasField("summary"):
        return out
    for value in event.summary.value:
        if value.HasField("image"):
            out.append((value.tag, bytes(value.image.encoded_image_string)))
        elif plugins.get(value.tag) == "images" and value.HasField("tensor"):
            out.extend(
                (value.tag, bytes(blob)) for blob in value.tensor.string_val[2:3]
            )  # width, height, image
    return out


def watch(
    logdir: str,
    *,
    server: str | None,
    project: str | None,
    data_dir: str,
    token: str | None,
    poll_s: float,
    once: bool = False,
) -> int:
    """The CLI: follow LOGDIR until Ctrl-C (or one pass with `once`); print progress lines."""
    watcher = Watcher(logdir, server=server, project=project, data_dir=data_dir, token=token, poll_s=poll_s)
    print(f"watching {watcher.root} (project {watcher.project}); Ctrl-C to stop", flush=True)
    last = time.monotonic()
    try:
        while True:
            watcher.poll()
            if time.monotonic() - last > 10 or once:
                runs, files = len(watcher.runs), len(watcher.files)
                print(f"{runs} runs, {files} files, {watcher.sent} scalar events sent", flush=True)
                last = time.monotonic()
            if once:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()
    return 0
