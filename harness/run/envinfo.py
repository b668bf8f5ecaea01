"""What a result row records about where it came from: versions, the git commit, the host and
device (:func:`environment`); and :func:`portable_path`, how a plan's file is named in a store or
a report read on another machine. W&B's folders are :mod:`modtransfer.run.wandb_folders`, a run's
temporary files :mod:`modtransfer.run.tmp_folders`."""

from __future__ import annotations

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
    from modtransfer.core import __version__

    out["modtransfer"] = __version__
    return out


def environment(device: str = "cpu") -> dict[str, Any]:
    import torch

    info = {**versions(), "commit": git_commit(), "host": socket.gethostname(), "platform": platform.platform(),
            "device": device, "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def portable_path(path: str | Path) -> str:
    """``path`` relative to the working folder when it lies under it (a report or a store written
    here can be read on another machine), else as given, resolved."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)
