"""Executing a plan's cells: in this process, on a pool of warm worker processes, or on Ray.

Every executor skips cells already in the store, claims a cell before training it, and has
the process that trained the cell write its row (one transaction), so an interrupted run loses
at most the cells in flight, and a cell is never recorded twice. :data:`~modtransfer.run.executors.EXECUTORS`
is the one list of executor names (plans and the command line are checked against it); ``auto`` picks
local or processes from the worker x thread layout (:mod:`modtransfer.run.layout`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modtransfer.run.executors import EXECUTORS
from modtransfer.run.layout import Layout, choose_layout
from modtransfer.run.stacking import group_cells, group_cost
from modtransfer.run.workers import WorkerPool, train_and_record_group

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Cell, Plan

class ProgressSink(Protocol):
    """What :func:`execute` tells as cells start and finish (the command line's display)."""

    def start(self, label: str) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


@dataclass
class _Job:
    """What every executor needs besides the cells."""

    plan: Plan
    run_dir: Path
    layout: Layout
    plugins: list[str]
    cache_dir: str | None
    device: str
    ray_address: str | None
    start: Callable[[Cell], None]
    done: Callable[[dict[str, Any]], None]


def _local(job: _Job, groups: list[list[Cell]]) -> None:
    """In this process, one group (one stacked model, or one cell) at a time, on the layout's torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(job.layout.threads)
    try:
        for group in groups:
            for cell in group:
                job.start(cell)
            train_and_record_group(group, job.run_dir, job.plan.wandb, job.cache_dir, job.device, each=job.done)
    finally:
        torch.set_num_threads(before)


def _processes(job: _Job, groups: list[list[Cell]]) -> None:
    """A pool of long-lived worker processes on this machine (workers x threads of the layout)."""
    run = {"run_dir": str(job.run_dir), "wandb": dict(job.plan.wandb), "cache_dir": job.cache_dir,
           "device": job.device}
    with WorkerPool(job.layout.workers, job.layout.threads, job.plugins, run) as pool:
        pool.run(groups, job.start, job.done)


def _ray(job: _Job, groups: list[list[Cell]]) -> None:
    """Ray tasks on a local cluster or an existing one (--ray-address); workers = tasks in flight."""
    from modtransfer.run.ray_executor import execute_ray

    execute_ray(job.plan, job.run_dir, groups, plugins=job.plugins, cache_dir=job.cache_dir, device=job.device,
                done=job.done, address=job.ray_address, workers=job.layout.workers, threads=job.layout.threads,
                start=job.start)


def _auto(job: _Job, groups: list[list[Cell]]) -> None:
    """This process for a layout of one worker, else the worker pool (the default)."""
    (_local if job.layout.workers == 1 else _processes)(job, groups)


#: executor name (:data:`modtransfer.run.executors.EXECUTORS`, where each is described) -> the function that runs it
RUNNERS: dict[str, Callable[[_Job, list[list[Cell]]], None]] = {
    "auto": _auto, "local": _local, "processes": _processes, "ray": _ray,
}


def resolve_layout(executor: str, cells: list[Cell], *, workers: int | None = None, threads: int | None = None,
                   device: str = "auto", stack: Any = "auto") -> Layout:
    """The worker x thread layout ``executor`` will use for ``cells`` (None: chosen automatically),
    counting each stacked group of seeds (``stack``, :mod:`modtransfer.run.stacking`) as one job of its real size."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; one of {', '.join(EXECUTORS)}")
    dev = device
    if device == "auto":
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
    costs = [group_cost(g) for g in group_cells(cells, stack, dev)]
    if executor != "local":
        return choose_layout(cells, workers=workers, threads=threads, device=dev, costs=costs)
    if workers not in (None, 1):
        raise ValueError(f"the local executor trains in this process: workers must be 1, got {workers}")
    layout = choose_layout(cells, workers=1, threads=threads, device=dev, costs=costs)
    return replace(layout, reason=layout.reason.replace("workers set", "local: one process", 1))


def execute(
    plan: Plan, run_dir: Path, cells: Iterable[Cell], *, executor: str = "auto", workers: int | None = None,
    threads: int | None = None, layout: Layout | None = None, plugins: list[str] | None = None,
    cache_dir: str | None = None, device: str = "auto", progress: ProgressSink | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None, ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Train every given cell not already in the store; returns the cells' summaries.

    ``layout`` (from :func:`resolve_layout`) wins over ``workers``/``threads``; without any of
    them the layout is chosen for these cells on this machine.
    """
    todo = list(cells)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; one of {', '.join(EXECUTORS)}")
    stack = getattr(plan, "stack", "auto")
    layout = layout or resolve_layout(executor, todo, workers=workers, threads=threads, device=device, stack=stack)
    results: list[dict[str, Any]] = []

    def start(cell: Cell) -> None:
        if progress:
            progress.start(cell.label)

    def done(summary: dict[str, Any]) -> None:
        results.append(summary)
        if progress:
            progress.finish(summary)
        if on_result:
            on_result(summary)

    if todo:
        job = _Job(plan, Path(run_dir), layout, list(plugins or []), cache_dir, device, ray_address, start, done)
        RUNNERS[executor](job, group_cells(todo, stack, device=device))
    return results
