"""What a result row records about where it came from (versions, git commit, device), and where
W&B and temporary files go: every W&B folder inside ``RUN_DIR/wandb``, one layout for cells and
reports, and the run folder's identity that names its W&B group."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
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


#: W&B modes, the one list: a plan's ``wandb.mode``, ``--wandb`` on the command line, the cells and the report
#: all read it (``disabled`` logs nothing; ``offline`` writes local runs for ``wandb sync``)
WANDB_MODES = ("offline", "online", "disabled")
#: W&B's folders, each an environment variable, and where it goes under ``RUN_DIR/wandb`` ("" is the root)
WANDB_FOLDERS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": ".cache", "WANDB_CONFIG_DIR": ".config",
                 "WANDB_DATA_DIR": ".data", "WANDB_ARTIFACT_DIR": ".artifacts"}
#: the meta key of the run folder's identity (a uuid written once into its results store)
RUN_UID_KEY = "run_uid"


def wandb_env(run_dir: Path, mode: str) -> dict[str, str]:
    """Environment that keeps every W&B folder inside ``run_dir/wandb`` (created here), quiet and offline-safe.

    The single place that names W&B's folders: the cells (:func:`apply_wandb_env`) and the report
    run (:func:`wandb_env_for`) both use it, so a run folder has one ``wandb/`` layout.
    """
    base = Path(run_dir).resolve() / "wandb"
    env = {key: str(base / sub) if sub else str(base) for key, sub in WANDB_FOLDERS.items()}
    env.update({"WANDB_MODE": mode, "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
                "WANDB__SERVICE_WAIT": "60"})
    for key in WANDB_FOLDERS:
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def wandb_env_for(run_dir: Path, mode: str) -> Iterator[Path]:
    """For the duration: :func:`wandb_env` in ``os.environ``; yields ``run_dir/wandb``; restores it after."""
    env = wandb_env(run_dir, mode)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield Path(env["WANDB_DIR"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_folder_id(run_dir: Path, create: bool = True) -> str | None:
    """The run folder's stable identity: a uuid stored once in its results store's meta table.

    Two run folders of benchmarks with the same name get different ids, so their W&B groups
    never merge on sync; re-running in the same folder keeps the id. Created on first use under a
    file lock (workers of one run may ask at once); ``create=False`` only reads (None if absent).
    """
    import fcntl
    import uuid

    from modtransfer.run.store import Store

    store = Store(Path(run_dir) / "results.sqlite", readonly=not create)
    uid = store.meta().get(RUN_UID_KEY) if store.exists() else None
    if uid or not create:
        return str(uid) if uid else None
    lock = Path(run_dir) / "wandb" / ".run_uid.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        uid = store.meta().get(RUN_UID_KEY)
        if not uid:
            uid = uuid.uuid4().hex
            store.set_meta(RUN_UID_KEY, uid)
    return str(uid)


def wandb_group(benchmark: str, uid: str | None) -> str:
    """The W&B group of a run folder's runs: ``<benchmark>-<first 8 characters of its id>``.

    A store from before run folder ids (no uid) keeps the plain benchmark name, which its
    existing W&B runs used. W&B limits group names to 128 characters.
    """
    return (f"{benchmark[:119]}-{uid[:8]}" if uid else benchmark)[:128]


def remove_local_runs(run_dir: Path, run_id: str) -> int:
    """Delete the local W&B run folders of ``run_id`` under ``run_dir/wandb`` (before it logs again).

    A cell trained again, or a report built again, logs under the same run id; W&B offline mode
    writes one ``offline-run-<time>-<id>`` folder per attempt, and syncing all of them would
    stack the stale attempts' history into the run. Keeping only the newest makes the run
    folder hold exactly one W&B run per id. Returns how many folders were removed.
    """
    import shutil

    root = Path(run_dir) / "wandb" / "wandb"
    if not root.is_dir():
        return 0
    removed = 0
    for sub in root.iterdir():
        if sub.name.startswith(("offline-run-", "run-")) and sub.name.endswith(f"-{run_id}") and sub.is_dir() \
                and not sub.is_symlink():
            shutil.rmtree(sub, ignore_errors=True)
            removed += 1
    return removed


def process_tmp(run_dir: Path) -> Path:
    """This process's temporary folder inside the run folder (``wandb/.tmp/<pid>``).

    W&B stages media and artifacts in temporary folders; a run killed with -9 cannot remove
    them, so they live here rather than in the system temp dir, and the next run clears them
    (:func:`clean_stale_tmp`).
    """
    return Path(run_dir) / "wandb" / ".tmp" / str(os.getpid())


def apply_wandb_env(run_dir: Path, mode: str) -> None:
    """Point W&B's folders, and this process's temporary files, into the run folder."""
    os.environ.update(wandb_env(run_dir, mode))
    use_run_tmp(run_dir)


@contextlib.contextmanager
def run_tmp(run_dir: Path) -> Iterator[Path]:
    """For the duration: temporary files of this process (and its workers) in :func:`process_tmp`.

    The environment and ``tempfile.tempdir`` are restored and the folder removed afterwards, so an
    in-process caller (a test, a notebook) is left as it was.
    """
    import atexit
    import shutil
    import sys
    import tempfile

    keys = ("TMPDIR", "MODTRANSFER_RUN_TMP")
    wandb_before = "wandb" in sys.modules
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_tempdir = tempfile.tempdir
    os.environ.pop("MODTRANSFER_RUN_TMP", None)
    tmp = process_tmp(run_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["MODTRANSFER_RUN_TMP"] = os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    try:
        yield tmp
    finally:
        tempfile.tempdir = saved_tempdir
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if wandb_before or "wandb" not in sys.modules:
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # W&B, imported meanwhile, keeps process-lifetime media folders in there: remove at exit
            atexit.register(shutil.rmtree, tmp, True)


def use_run_tmp(run_dir: Path) -> Path:
    """Send this process's temporary files into :func:`process_tmp` (W&B creates some when imported)."""
    import tempfile

    if os.environ.get("MODTRANSFER_RUN_TMP") and Path(os.environ["MODTRANSFER_RUN_TMP"]).is_dir():
        tmp = Path(os.environ["MODTRANSFER_RUN_TMP"])  # a worker of a run: share its parent's folder
    else:
        import atexit
        import shutil

        tmp = process_tmp(run_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["MODTRANSFER_RUN_TMP"] = str(tmp)
        atexit.register(shutil.rmtree, tmp, True)  # a normal exit leaves nothing; a killed one, the next run
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)  # gettempdir() caches its first answer: replace it
    return tmp


def clean_stale_tmp(run_dir: Path) -> int:
    """Remove the temporary folders of processes of this run folder that are gone; returns how many."""
    import shutil

    root = Path(run_dir) / "wandb" / ".tmp"
    removed = 0
    if not root.is_dir():
        return 0
    for sub in root.iterdir():
        if not sub.name.isdigit() or int(sub.name) == os.getpid():
            continue
        try:
            os.kill(int(sub.name), 0)
            continue  # still alive (or the pid was reused: leave it, it is only temporary files)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(sub, ignore_errors=True)
        removed += 1
    return removed


def portable_path(path: str | Path) -> str:
    """``path`` relative to the working folder when it lies under it (a report or a store written
    here can be read on another machine), else as given, resolved."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)
