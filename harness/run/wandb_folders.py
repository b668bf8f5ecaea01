"""Where W&B writes: every W&B folder inside ``RUN_DIR/wandb`` (one layout for cells and reports),
the W&B modes, the run folder's identity that names its W&B group, and removing a run id's stale
local W&B runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from modtransfer.run.tmp_folders import use_run_tmp

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


def apply_wandb_env(run_dir: Path, mode: str) -> None:
    """Point W&B's folders, and this process's temporary files, into the run folder."""
    os.environ.update(wandb_env(run_dir, mode))
    use_run_tmp(run_dir)
