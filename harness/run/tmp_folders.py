"""A run's temporary files: each process of a run folder keeps them in ``RUN_DIR/wandb/.tmp/<pid>``
(W&B stages media there), removed when it exits, and a later run clears those of processes that
were killed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def process_tmp(run_dir: Path) -> Path:
    """This process's temporary folder inside the run folder (``wandb/.tmp/<pid>``).

    W&B stages media and artifacts in temporary folders; a run killed with -9 cannot remove
    them, so they live here rather than in the system temp dir, and the next run clears them
    (:func:`clean_stale_tmp`).
    """
    return Path(run_dir) / "wandb" / ".tmp" / str(os.getpid())


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
