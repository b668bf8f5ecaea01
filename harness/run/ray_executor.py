"""The Ray executor: one Ray task per cell, on a local cluster or an existing one.

Each task runs :func:`modtransfer.run.workers.train_and_record_group` (one group of cells) in a Ray worker, so the worker
claims the cell, trains it and writes its row exactly as the local executor does; the driver
only schedules and reports. Ray keeps worker processes warm between tasks of the same
function, so the imports (torch, Lightning) are paid once per worker, not once per cell.

At most ``workers`` cells are in flight at a time. Each task declares its resources
(``threads`` CPUs, the torch threads it runs on, and one GPU when the cells train on CUDA), so
a cluster with GPUs places one cell per GPU; both come from the run's worker x thread layout. With ``address`` the executor joins an existing cluster (``ray start --head``);
the store is a SQLite file, so every node must see ``run_dir`` at the same path on a
filesystem with working POSIX locks (a local disk for a single machine; not NFS).

Ray is imported inside the functions: ``import modtransfer.run.ray_executor`` stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Cell, Plan

#: How often Ray may retry a task whose worker process died (not a cell that raised:
#: ``train_and_record`` records exceptions as ``failed`` rows and returns normally).
MAX_RETRIES = 1


def _run_group(cells: list[Cell], run_dir: str, wandb_cfg: dict[str, Any], cache_dir: str | None, device: str,
               plugins: list[str], threads: int) -> list[dict[str, Any]]:
    """The body of a Ray task: set the threads, load the plugins, then claim, train and record one
    group of cells (one stacked model where they can stack; each row recorded as it is finished)."""
    from modtransfer.run.workers import train_and_record_group, warm_up

    warm_up(threads, plugins)
    return train_and_record_group(cells, Path(run_dir), wandb_cfg, cache_dir, device)


def _wants_gpu(device: str, cluster_gpus: float) -> bool:
    if device == "cuda" or device.startswith("cuda:"):
        return True
    return device == "auto" and cluster_gpus > 0


def _start_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address``, or start a local one, unless Ray runs already; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        import torch

        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    return True


def _results(ray: Any, ref: Any, cells: list[Cell]) -> list[dict[str, Any]]:
    """A finished task's summaries, or ``lost`` ones when its worker died (cells it had not recorded
    get no row, so the next run trains them again)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [{"cell_id": c.cell_id, "label": c.label, "status": "lost",
                 "error": f"Ray task lost, no row written (run again to retry): {first}"} for c in cells]


def execute_ray(
    plan: Plan, run_dir: Path, groups: list[list[Cell]], *, plugins: list[str], cache_dir: str | None, device: str,
    done: Callable[[dict[str, Any]], None], address: str | None, workers: int, threads: int = 1,
    start: Callable[[Cell], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``groups`` of cells as Ray tasks, one task per group (at most ``workers`` at a time,
    ``threads`` CPUs each); returns the cells' summaries.

    ``start(cell)`` is called as a group's task is submitted, ``done(summary)`` in the driver for
    each cell as its group finishes, with the dicts that ``train_and_record_group`` returned in
    the worker. A task whose worker died twice is reported with status ``lost`` for its cells.
    """
    import ray

    if not groups:
        return []
    workers = max(1, workers)
    run_dir = Path(run_dir).resolve()   # workers may start in another directory
    cache = str(Path(cache_dir).resolve()) if cache_dir else None
    plugin_files = [str(Path(p).resolve()) for p in plugins]

    started_here = _start_ray(address)
    summaries: list[dict[str, Any]] = []
    pending: dict[Any, list[Cell]] = {}
    try:
        gpus = 1 if _wants_gpu(device, float(ray.cluster_resources().get("GPU", 0))) else 0
        cpus = max(1, threads)
        remote = ray.remote(max_retries=MAX_RETRIES)(_run_group)
        queue = [list(g) for g in groups]
        while queue or pending:
            while queue and len(pending) < workers:
                group = queue.pop(0)
                name = f"cell {group[0].label}" + (f" +{len(group) - 1} seeds" if len(group) > 1 else "")
                ref = remote.options(num_cpus=cpus, num_gpus=gpus, name=name).remote(
                    group, str(run_dir), dict(plan.wandb), cache, device, plugin_files, cpus)
                pending[ref] = group
                if start is not None:
                    for cell in group:
                        start(cell)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                for summary in _results(ray, ref, pending.pop(ref)):
                    summaries.append(summary)
                    done(summary)
    finally:
        for ref in pending:  # interrupted: stop the cells in flight (their claims go stale)
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
    return summaries
