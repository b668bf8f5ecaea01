"""What a command checks about the user's environment before anything trains: plugins that load,
a device this machine has, folders it can write, and a W&B login that answers (online mode)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from modtransfer.core.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
WANDB_CHECK_SECONDS = 8.0


def load_plugins(args: argparse.Namespace, *, strict: bool = False) -> list[str]:
    """Load entry points and ``--plugin`` files; ``strict``: a failed ``--plugin`` file is exit 2."""
    from modtransfer.core.plugins import load_plugins as load
    from modtransfer.core.plugins import problem_warnings, raise_problems

    files = list(dict.fromkeys(getattr(args, "plugin", []) or []))
    load(files)
    if strict:
        raise_problems(files)
    for line in problem_warnings(files):
        print(line, file=sys.stderr)
    return files


def check_device(device: str) -> None:
    """--device names a device this machine has (before any training)."""
    kind = device.split(":", 1)[0]
    if kind not in DEVICES or (":" in device and not device.split(":", 1)[1].isdigit()):
        raise UserError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if kind in ("auto", "cpu"):
        return
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu "
                            "(or auto)")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: the Apple GPU backend is not available here; use --device cpu")


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is (or can become) a folder this process can write, checked without leaving anything behind."""
    import tempfile

    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a file, not a folder; pass a folder (e.g. runs)")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UserError(f"{what} {str(path)!r} cannot be written ({exc.strerror or exc} in {probe}); pass a folder "
                        "you can write") from None


def _wandb_key() -> str | None:
    """The W&B API key from ``WANDB_API_KEY`` or ``~/.netrc``, or None."""
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        return auth[2] if auth else None
    except (OSError, netrc.NetrcParseError):
        return None


def check_wandb_online() -> None:
    """Online W&B needs a key, and the key must be accepted within a few seconds (a bad network hangs for minutes)."""
    import threading

    key = _wandb_key()
    if not key:
        raise UserError("W&B online mode needs an API key: run `wandb login` or set WANDB_API_KEY, or use "
                        "--wandb offline (and `wandb sync` later)")
    result: dict[str, object] = {}

    def verify() -> None:
        try:
            import wandb

            result["ok"] = bool(wandb.login(key=key, verify=True, relogin=True, timeout=int(WANDB_CHECK_SECONDS)))
        except Exception as exc:  # noqa: BLE001 - any failure means the login cannot be used
            result["error"] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=verify, daemon=True)
    t.start()
    t.join(WANDB_CHECK_SECONDS)
    if t.is_alive():
        raise UserError(f"W&B did not answer within {WANDB_CHECK_SECONDS:.0f} s (no network?); use --wandb offline "
                        "and `wandb sync` the run folders later")
    if not result.get("ok"):
        why = str(result.get("error", "the key was refused")).splitlines()[0][:200]
        raise UserError(f"W&B online login failed ({why}); check the key (`wandb login --relogin`) or use "
                        "--wandb offline")
