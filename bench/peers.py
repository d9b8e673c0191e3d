"""The peers (the trackers users would pick instead), each in a virtual environment of its own.

Versions are pinned so that runs compare like with like; each environment is created on first use
under bench/.venvs/ (minutes: MLflow alone is a minute to install). A peer that fails to install is
reported with pip's last words, never silently left out. The environment variables keep every peer
offline and quiet (measured with strace: no inet connect with them), and in the run's own folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
PEERS = {
    "mlflow": "mlflow==3.17.2",
    "aim": "aim==3.29.1",
    "trackio": "trackio==0.43.0",
    "wandb": "wandb==0.31.0",
}


def python_for(peer: str) -> tuple[str | None, str]:
    """The peer's interpreter, creating its environment if needed; else None and why."""
    venv = VENVS / peer
    python = venv / "bin" / "python"
    marker = venv / f".installed-{PEERS[peer]}"
    if marker.exists():
        return str(python), ""
    print(f"  installing {PEERS[peer]} into {venv} ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", PEERS[peer]],
    ]
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            return None, f"install failed: {(done.stdout + done.stderr).strip()[-400:]}"
    marker.touch()
    return str(python), ""


def env_for(peer: str | None, folder: str) -> dict[str, str]:
    """Offline, quiet, and writing only under `folder` (HOME included)."""
    env = {"HOME": folder, "DO_NOT_TRACK": "1"}
    if peer == "mlflow":
        env |= {"MLFLOW_DISABLE_TELEMETRY": "true"}
    elif peer == "aim":
        env |= {"AIM_UI_TELEMETRY_ENABLED": "0"}
    elif peer == "trackio":
        env |= {
            "TRACKIO_DIR": f"{folder}/trackio",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
    elif peer == "wandb":
        env |= {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DIR": folder,
            "WANDB_CONFIG_DIR": f"{folder}/wandb-config",
            "WANDB_CACHE_DIR": f"{folder}/wandb-cache",
            "WANDB_DATA_DIR": f"{folder}/wandb-data",
        }
    return env
