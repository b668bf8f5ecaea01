"""Measured-noise records: what ``modtransfer bench noise`` found, kept where ``run --dry-run`` finds it.

A record describes the baseline's seed noise on one task at one configuration: the task, its
configuration (with the task's defaults filled in), the budget's identity
(:meth:`~modtransfer.core.task.Budget.identity`), the size preset, the implementation, the
resolved baseline spec and the precision. The SHA-256 of those is the record's key, and the
record lives at ``<cache>/noise/<task>-<key>.json`` (``<cache>`` is ``$MODTRANSFER_CACHE`` or
``~/.cache/modtransfer``). A plan's baseline cell and ``bench noise`` compute the key from the
same :class:`~modtransfer.run.plan_types.Cell` fields (:func:`cell_noise_key`), so a dry run finds a
record exactly when it was measured at the plan's own budget and model; a record measured at
another budget has another key and is never used for it.

Fields a reader relies on (``version`` 1): ``task``, ``metric``, ``higher_is_better``,
``seeds`` (seeds per source), ``seed_sd`` (the baseline's SD over seeds with every source
varying, as ordinary cells vary), ``components`` (source -> ``{"sd", "n", "note"}``; ``sd`` is
None where the source does not apply), ``pairs`` (variant -> ``{"diff_sd", "corr", "n"}``),
``paired_diff_sd`` (median of the pairs' ``diff_sd``, None without pairs), ``seconds_per_cell``
(median wall seconds of one baseline training there), ``budget``, ``budget_label``, ``size``,
``implementation``, ``measured_at``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.core.task import TASKS, default_cache_dir

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Cell, Plan

VERSION = 1
FOLDER = "noise"


def noise_identity(cell: Cell) -> dict[str, Any]:
    """What a record's key hashes, from a (baseline) cell: the task, its full configuration, the
    budget's identity, the size, the implementation, the resolved spec and the precision."""
    return {"task": cell.task, "task_config": task_options(cell), "budget": cell.budget.identity(),
            "size": cell.size, "implementation": cell.spec.implementation, "spec": cell.spec.to_dict(),
            "precision": cell.precision}


def task_options(cell: Cell) -> dict[str, Any]:
    """The cell's task configuration in full: the task's defaults, the plan's options and (for a task
    that can decide on several metrics) the metric it decides on, as the task itself records them."""
    try:
        return dict(TASKS.get(cell.task)(cell.task_config, None).config)
    except Exception:  # an unknown task (a plugin not loaded), or options it refuses: as written
        return dict(cell.task_config)


def noise_key(identity: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``identity`` (canonical JSON)."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_noise_key(cell: Cell) -> str:
    return noise_key(noise_identity(cell))


def noise_dir(root: str | Path | None = None) -> Path:
    """``<root>/noise``; ``root`` defaults to the cache folder (``$MODTRANSFER_CACHE``)."""
    return Path(root if root is not None else default_cache_dir()) / FOLDER


def noise_path(task: str, key: str, root: str | Path | None = None) -> Path:
    return noise_dir(root) / f"{task}-{key}.json"


def write_noise(record: dict[str, Any], root: str | Path | None = None) -> Path:
    """Write ``record`` (it names its ``task`` and ``key``) atomically; returns its path."""
    for field in ("task", "key"):
        if not record.get(field):
            raise ValueError(f"a noise record needs {field!r}")
    path = noise_path(record["task"], record["key"], root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, **record}, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_noise(task: str, key: str, root: str | Path | None = None) -> dict[str, Any] | None:
    """The record of ``task`` under ``key``, or None when there is none (or it cannot be read)."""
    path = noise_path(task, key, root)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != VERSION or record.get("task") != task:
        return None
    return {**record, "path": str(path)}


def read_cell_noise(cell: Cell, root: str | Path | None = None) -> dict[str, Any] | None:
    """The record measured at ``cell``'s configuration (the plan's baseline cell of a task), if any."""
    return read_noise(cell.task, cell_noise_key(cell), root)


def primary_cells(plan: Plan, task: str) -> list[Cell]:
    """The plan's cells of ``task`` in its primary condition: the first size and implementation, no
    hyper-parameter setting, or the first setting when every cell has one (the condition a dry run
    projects and ``bench noise --plan`` measures)."""
    impl = plan.implementations[0] if plan.implementations else "modtransfer"
    cells = [c for c in plan.all_cells if c.task == task and c.size == plan.size and c.spec.implementation == impl]
    plain = [c for c in cells if not c.hparams]
    return plain or [c for c in cells if cells and c.hparams == cells[0].hparams]


def baseline_cell(plan: Plan, task: str) -> Cell | None:
    """The plan's first baseline cell of ``task`` in its primary condition (its noise key is the plan's)."""
    from modtransfer.core.variant import BASELINE

    return next((c for c in primary_cells(plan, task) if c.variant == BASELINE), None)
