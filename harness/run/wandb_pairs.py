"""Paired improvements for the W&B runs whose baseline finished after them.

A variant's run gets its paired improvement over the same-seed baseline when it ends, if that
baseline is already in the store (:func:`modtransfer.run.wandb_cell.close_wandb`). Cells run seed-
major with the variants rotated, and workers run side by side, so some baselines end later:
:func:`fill_paired_improvements` (called when a report is built) gives those runs their improvement.
Offline, the run is written again under its id from its own record (:data:`~modtransfer.run.wandb_cell.SIDECAR`:
how it was opened, its summary, its metrics' keys) and the stored curve, into the folder it had;
online, W&B resumes the run and only its summary is updated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from modtransfer.run.store import Store
from modtransfer.run.tmp_folders import process_tmp
from modtransfer.run.wandb_cell import BASELINE, SIDECAR, open_run, paired_summary, same_seed_baseline
from modtransfer.run.wandb_folders import apply_wandb_env, remove_local_runs


def fill_paired_improvements(run_dir: Path) -> int:
    """Add the paired improvement to every done variant run of ``run_dir`` that lacks it and whose
    same-seed baseline is now in the store; returns how many runs were updated (a run that cannot be
    updated is left as it was)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.sqlite"
    if not path.is_file():
        return 0
    updated = 0
    for row in Store(path, readonly=True).rows(status="done"):
        if row["variant"] == BASELINE or not row.get("wandb_dir"):
            continue
        folder = (run_dir / row["wandb_dir"]).parent
        sidecar = folder / SIDECAR
        if not sidecar.is_file():
            continue
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        baseline = None if record.get("paired") else same_seed_baseline(row, run_dir)
        if baseline is None:
            continue
        paired = paired_summary(row, baseline, record["keys"].get(row["primary_metric"], row["primary_metric"]))
        if paired:
            _rewrite(run_dir, folder, record, row, paired)
            updated += 1
    return updated


def _rewrite(run_dir: Path, folder: Path, record: dict[str, Any], row: dict[str, Any], paired: dict[str, Any]) -> None:
    """The run again with ``paired`` in its summary: offline, written anew (curve from the store) into
    ``folder``, the old folder kept aside until the new one is complete; online, resumed."""
    import wandb

    init = dict(record["init"])
    summary = {**record["summary"], **paired}
    apply_wandb_env(run_dir, init["mode"])
    if init["mode"] == "online":
        run = open_run(init, run_dir)
        run.summary.update(paired)
        wandb.finish(exit_code=0)
        _write(folder, {**record, "summary": summary, "paired": True})
        return
    aside = process_tmp(run_dir) / folder.name
    aside.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(aside)
    remove_local_runs(run_dir, init["id"])
    try:
        run = open_run(init, run_dir)
        keys = record["keys"]
        for point in row.get("curve") or []:
            values = {keys.get(k, k): v for k, v in point.items() if k != "step" and v is not None}
            if values:
                run.log({**values, "trainer/global_step": point["step"]})
        run.summary.update(summary)
        fresh = Path(run.dir).parent
        wandb.finish(exit_code=0)
    except Exception:
        remove_local_runs(run_dir, init["id"])
        aside.rename(folder)
        raise
    fresh.rename(folder)
    shutil.rmtree(aside, ignore_errors=True)
    _write(folder, {**record, "summary": summary, "paired": True})


def _write(folder: Path, record: dict[str, Any]) -> None:
    (folder / SIDECAR).write_text(json.dumps(record, default=str), encoding="utf-8")
