"""The Ray executor: one Ray task per cell, on a local cluster or an existing one.

Each task runs :func:`modtransfer.run.workers.train_and_record` in a Ray worker, so the worker
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

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modtransfer.run.cells import Cell, Plan

#: How often Ray may retry a task whose worker process died (not a cell that raised:
#: ``train_and_record`` records exceptions as ``failed`` rows and returns normally).
MAX_RETRIES = 1


def _run_one(cell: Cell, run_dir: str, wandb_cfg: dict[str, Any], cache_dir: str | None, device: str,
             plugins: list[str], threads: int) -> dict[str, Any]:
    """The body of a Ray task: set the threads, load the plugins, then claim, train and record one cell."""
    from modtransfer.run.workers import train_and_record, warm_up

    warm_up(threads, plugins)
    return train_and_record(cell, Path(run_dir), wandb_cfg, cache_dir, device)


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
        ray.init(address=address, log_to_driver=False, logging_level="warning")
    else:
        import torch

        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 log_to_driver=False, logging_level="warning", configure_logging=True)
    return True


def _result(ray: Any, ref: Any, cell: Cell) -> dict[str, Any]:
    """A finished task's summary, or a ``lost`` one when its worker died (no row was written)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"cell_id": cell.cell_id, "label": cell.label, "status": "lost",
                "error": f"Ray task lost, no row written (run again to retry): {first}"}


def execute_ray(
    plan: Plan, run_dir: Path, cells: list[Cell], *, plugins: list[str], cache_dir: str | None, device: str,
    done: Callable[[dict[str, Any]], None], address: str | None, workers: int, threads: int = 1,
    start: Callable[[Cell], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``cells`` as Ray tasks (at most ``workers`` at a time, ``threads`` CPUs each); returns their summaries.

    ``start(cell)`` is called as a cell's task is submitted, ``done(summary)`` in the driver as each cell finishes, with the dict that
    ``train_and_record`` returned in the worker. A task whose worker died twice is reported
    with status ``lost`` (no row is written, so the next run trains that cell again).
    """
    import ray

    if not cells:
        return []
    workers = max(1, workers)
    run_dir = Path(run_dir).resolve()   # workers may start in another directory
    cache = str(Path(cache_dir).resolve()) if cache_dir else None
    plugin_files = [str(Path(p).resolve()) for p in plugins]

    started_here = _start_ray(address)
    summaries: list[dict[str, Any]] = []
    pending: dict[Any, Cell] = {}
    try:
        gpus = 1 if _wants_gpu(device, float(ray.cluster_resources().get("GPU", 0))) else 0
        cpus = max(1, threads)
        remote = ray.remote(max_retries=MAX_RETRIES)(_run_one)
        queue = list(cells)
        while queue or pending:
            while queue and len(pending) < workers:
                cell = queue.pop(0)
                ref = remote.options(num_cpus=cpus, num_gpus=gpus, name=f"cell {cell.label}").remote(
                    cell, str(run_dir), dict(plan.wandb), cache, device, plugin_files, cpus)
                pending[ref] = cell
                if start:
                    start(cell)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                summary = _result(ray, ref, cell)
                summaries.append(summary)
                done(summary)
    finally:
        for ref in pending:  # interrupted: stop the cells in flight (their claims go stale)
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
    return summaries
