"""`trainpilot watch LOGDIR`: stream every scalar of a TensorBoard log directory into trainpilot.

Non-invasive: the training program keeps writing its event files; the watcher follows them with the
reader (reader.py: which files make which run, a record still being written is read once complete)
and sends each scalar as a metrics event of a trainpilot run.

- Every record gets a seq from (a hash of the file's path, record number), so re-reading a file after
  a restart stores nothing twice; the watcher also remembers how far it read, in ``<data_dir>/watch/``,
  so it need not send again. It saves that position only once everything read before it is
  delivered or in the spool (`Run.flush`): killed with -9 at any moment, it re-reads what it had not
  handed over and loses nothing.
- Images (legacy image summaries and the TF2 images plugin) go to the run as media; like every
  image they are best-effort on a restart: a re-read file sends its images again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from trainpilot.sdk.run import Run, init
from trainpilot.tensorboard.reader import EventFile, event_files, images, run_of, scalars

log = logging.getLogger("trainpilot.tensorboard.tailer")
RECORD_BITS = 32


@dataclass
class TailedFile:
    file: EventFile
    ordinal: int
    run_key: str
    prefix: str
    skip: int = 0  # records a restart does not send again
    broken: bool = False  # a record that is not an Event: the rest of the file is skipped


def run_id_for(root: Path, run_key: str) -> str:
    digest = hashlib.sha1(f"{root}\0{run_key}".encode()).hexdigest()[:10]
    return f"tb-{digest}"


class Watcher:
    """Follows one log directory: `poll` sends what is new in it, `close` delivers and saves the position."""

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        server: str | None = None,
        project: str | None = None,
        data_dir: str = "./trainpilot-data",
        token: str | None = None,
    ) -> None:
        self.root = Path(logdir).expanduser().resolve()
        if not self.root.is_dir():
            raise ValueError(f"{logdir} is not a directory")
        self.server = server
        self.project = project or self.root.name
        self.data_dir = data_dir
        self.token = token
        self.files: dict[Path, TailedFile] = {}
        self.runs: dict[str, Run] = {}
        self.sent = 0
        state_name = hashlib.sha1(str(self.root).encode()).hexdigest()[:16] + ".json"
        self.state_path = Path(data_dir) / "watch" / state_name
        self._state: dict[str, dict[str, int]] = self._load_state()

    # -- state ------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict[str, int]]:
        try:
            state = orjson.loads(self.state_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        state = {
            str(path.relative_to(self.root)): {"records": t.file.records} for path, t in self.files.items()
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(state))
        tmp.replace(self.state_path)

    # -- finding files ------------------------------------------------------------------------------

    def scan(self) -> list[TailedFile]:
        """Event files not seen before, in name order (their names carry their creation time)."""
        return [self._track(path) for path in event_files(self.root) if path not in self.files]

    def _track(self, path: Path) -> TailedFile:
        rel = path.relative_to(self.root)
        saved = self._state.get(str(rel), {})
        # From the file's own path, so a watcher that lost its state numbers records the same way.
        ordinal = int(hashlib.sha1(str(rel).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
        run_key, prefix = run_of(rel)
        tailed = TailedFile(EventFile(path), ordinal, run_key, prefix, skip=int(saved.get("records", 0)))
        self.files[path] = tailed
        return tailed

    def _run(self, run_key: str) -> Run:
        run = self.runs.get(run_key)
        if run is None:
            name = self.root.name if run_key == "." else run_key
            run = init(
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
            if tailed.broken:
                continue
            try:
                sent += self._read(tailed)
            except (OSError, ValueError) as exc:  # a corrupt file must not stop the others
                log.warning("skipping the rest of %s: %s", tailed.file.path, exc)
                tailed.broken = True
        if sent and self._handed_over():
            self._save_state()
        self.sent += sent
        return sent

    def _handed_over(self) -> bool:
        """Whether every run has delivered or spooled what was read: only then may the position be saved."""
        return all(run.flush() for run in self.runs.values())

    def _read(self, tailed: TailedFile) -> int:
        sent = 0
        plugins = tailed.file.plugins
        for event in tailed.file.read():
            index = tailed.file.records - 1
            values = scalars(event, plugins)  # also for a record not sent again: it may name a plugin
            if index < tailed.skip:
                continue
            step = max(0, event.step)
            for tag, png in images(event, plugins):
                self._run(tailed.run_key).log_image(tailed.prefix + tag, png, step=step)
            if not values:
                continue
            data = {tailed.prefix + tag: value for tag, value in values.items()}
            seq = (tailed.ordinal << RECORD_BITS) | index
            self._run(tailed.run_key).log_recorded(data, step=step, ts=event.wall_time, seq=seq)
            sent += 1
        return sent

    def close(self) -> None:
        """Deliver what was read and stop; the runs stay open for the next watcher."""
        handed_over = self._handed_over()
        for run in self.runs.values():
            run.close(timeout=30)
        if self.files and handed_over:
            self._save_state()


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
    watcher = Watcher(logdir, server=server, project=project, data_dir=data_dir, token=token)
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
