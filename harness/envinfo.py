"""What a result row records about where it came from: versions, git commit, device."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any


@cache
def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` when it has local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("lightning", "torchmetrics", "wandb", "tokenizers", "sacrebleu"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            out[mod] = None
    from . import __version__

    out["modtransfer"] = __version__
    return out


def environment(device: str = "cpu") -> dict[str, Any]:
    import torch

    info = {**versions(), "commit": git_commit(), "host": socket.gethostname(), "platform": platform.platform(),
            "device": device, "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def wandb_env(run_dir: Path, mode: str) -> dict[str, str]:
    """Environment that keeps every W&B folder inside the run folder."""
    base = run_dir / "wandb"
    env = {
        "WANDB_DIR": str(base),
        "WANDB_CACHE_DIR": str(base / ".cache"),
        "WANDB_CONFIG_DIR": str(base / ".config"),
        "WANDB_DATA_DIR": str(base / ".data"),
        "WANDB_ARTIFACT_DIR": str(base / ".artifacts"),
        "WANDB_MODE": mode,
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB__SERVICE_WAIT": "60",
    }
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def apply_wandb_env(run_dir: Path, mode: str) -> None:
    os.environ.update(wandb_env(run_dir, mode))
