"""The package's shape (issue 18): imports only run down the layers docs/architecture.md draws, and
the public import paths the README and the docs promise keep working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trainpilot

PACKAGE = Path(trainpilot.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"version", "exceptions", "extras", "events", "wire", "settings", "downsample"},  # the shared contract
    {"client", "store"},
    {"broker", "analysis"},
    {"server"},
    {"sdk"},
    {"tensorboard", "integrations"},
    {"trainer"},
    {"cli", "__init__"},
]


def layer_of(top: str) -> int:
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{top!r} is in no layer of LAYERS: place it there and in docs/architecture.md")


def top_of(path: Path) -> str:
    """The layer a file belongs to: its sub-package, or its own name for a flat module."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_tops(tree: ast.AST) -> set[str]:
    """The first name under `trainpilot.` of every import, wherever it is (lazy ones included)."""
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "trainpilot":
                continue
            if len(parts) > 1:
                tops.add(parts[1])
            else:  # `from trainpilot import x`: the facade, or a sub-module by name
                tops.update(
                    alias.name if (PACKAGE / alias.name).exists() else "__init__" for alias in node.names
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "trainpilot":
                    tops.add(parts[1] if len(parts) > 1 else "__init__")
    return tops


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        top = top_of(path)
        own = layer_of(top)
        for target in imported_tops(ast.parse(path.read_text(), str(path))):
            if layer_of(target) > own:
                upward.append(f"{path.relative_to(PACKAGE)} imports trainpilot.{target}")
    assert upward == []


def test_the_contract_modules_import_nothing_above_the_contract() -> None:
    for name in LAYERS[0]:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        assert imported_tops(tree) <= LAYERS[0], name


def test_only_sdk_embedded_reaches_into_the_server_from_the_training_side() -> None:
    """A training script imports the SDK, not the server: only the opt-in embedded mode may."""
    reaching = {
        str(path.relative_to(PACKAGE))
        for name in ["sdk", "tensorboard", "trainer"]
        for path in (PACKAGE / name).rglob("*.py")
        if "server" in imported_tops(ast.parse(path.read_text()))
    }
    assert reaching == {"sdk/embedded.py"}


def test_the_facade_exports_what_it_documents() -> None:
    assert sorted(trainpilot.__all__) == [
        "ConfigError",
        "Conflict",
        "InvalidInput",
        "NotFound",
        "Run",
        "StoreUnavailable",
        "TrainpilotError",
        "TransportError",
        "__version__",
        "init",
    ]
    for name in trainpilot.__all__:
        assert getattr(trainpilot, name) is not None


def test_the_documented_import_paths_work() -> None:
    from trainpilot.cli import main
    from trainpilot.tensorboard import SummaryWriter

    assert callable(main)
    assert SummaryWriter.__module__ == "trainpilot.tensorboard.writer"
    assert callable(trainpilot.init)


def test_python_dash_m_trainpilot_cli_and_the_evaluator_start() -> None:
    for module in ["trainpilot.cli", "trainpilot.analysis.evaluate"]:
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout
