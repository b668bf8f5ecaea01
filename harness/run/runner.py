"""Executing a plan's cells: in this process, on a pool of warm worker processes, or on Ray.

Every executor skips cells already in the store, claims a cell before training it, and has
the process that trained the cell write its row (one transaction), so an interrupted run loses
at most the cells in flight, and a cell is never recorded twice. :data:`EXECUTORS` is the one
list of executor names (plans and the command line are checked against it); ``auto`` picks
local or processes from the worker x thread layout (:mod:`modtransfer.run.layout`).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.run.layout import Layout, choose_layout
from modtransfer.run.stacking import group_cells, group_cost
from modtransfer.run.store import Store
from modtransfer.run.workers import WorkerPool, train_and_record, train_and_record_group

if TYPE_CHECKING:
    from modtransfer.run.cells import Cell, Plan

__all__ = ["EXECUTORS", "Progress", "execute", "resolve_layout", "results_table", "train_and_record"]


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


#: executor name -> function; the docstrings are the descriptions the command line shows
EXECUTORS: dict[str, Callable[[_Job, list[list[Cell]]], None]] = {
    "auto": _auto, "local": _local, "processes": _processes, "ray": _ray,
}


def executor_help() -> str:
    return "; ".join(f"{name}: {(fn.__doc__ or '').strip().rstrip('.')}" for name, fn in EXECUTORS.items())


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


class Progress:
    """A benchmark-level display: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: Any = None, live: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.counts: Counter[str] = Counter()
        self.running: set[str] = set()
        self.started = time.perf_counter()
        self.durations: list[float] = []
        self.live = self.stream.isatty() if live is None else live
        self._rich = None
        if self.live and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.description}"), transient=False)
            self._task = self._rich.add_task("", total=total)
            self._rich.start()

    def _desc(self) -> str:
        c = self.counts
        bits = [f"done {c['done']}", f"failed {c['failed']}", f"diverged {c['diverged']}"]
        if c["timeout"]:
            bits.append(f"timeout {c['timeout']}")
        if self.running:
            bits.append("now: " + ", ".join(sorted(self.running)[:3]))
        return " | ".join(bits)

    def start(self, label: str) -> None:
        self.running.add(label)
        if self._rich:
            self._rich.update(self._task, description=self._desc())

    def finish(self, summary: dict[str, Any]) -> None:
        self.running.discard(summary["label"])
        self.counts[summary["status"]] += 1
        if summary.get("wall_s"):
            self.durations.append(summary["wall_s"])
        n = sum(self.counts.values())
        if self._rich:
            self._rich.update(self._task, advance=1, description=self._desc())
            return
        value = summary.get("primary_value")
        metric = f" {summary['primary_metric']}={value:.4g}" if isinstance(value, float) else ""
        err = f" ({summary['error']})" if summary.get("error") and summary["status"] != "done" else ""
        left = self.total - n
        eta = f", ETA {left * (sum(self.durations) / len(self.durations)):.0f} s" if self.durations and left else ""
        print(f"[{n}/{self.total}] {summary['status']:<8} {summary['label']}{metric} "
              f"({summary.get('wall_s') or 0:.1f} s{eta}){err}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich:
            self._rich.stop()


def execute(
    plan: Plan, run_dir: Path, cells: Iterable[Cell], *, executor: str = "auto", workers: int | None = None,
    threads: int | None = None, layout: Layout | None = None, plugins: list[str] | None = None,
    cache_dir: str | None = None, device: str = "auto", progress: Progress | None = None,
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
        EXECUTORS[executor](job, group_cells(todo, stack, device=device))
    return results


def results_table(plan: Plan, store: Store) -> tuple[list[str], list[list[str]]]:
    """Variants (one row per hyper-parameter setting) x tasks: mean ± SD of the primary metric over seeds."""
    import json

    ids = {c.cell_id for c in plan.all_cells}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    def setting(hp: dict[str, Any], impl: str) -> str:
        return json.dumps({**hp, **({"implementation": impl} if len(plan.implementations) > 1 else {})},
                          sort_keys=True)

    by: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        impl = (r.get("spec") or {}).get("implementation", "modtransfer")
        by.setdefault((r["variant"], setting(r.get("hparams") or {}, impl), r["task"]), []).append(r)
    metric = {t: next((r["primary_metric"] + (" ^" if r["higher_is_better"] else " v")
                       for r in rows if r["task"] == t), t) for t in plan.tasks}
    header = ["variant"] + [f"{t} {metric[t]}" for t in plan.tasks]
    settings = list(dict.fromkeys(setting(c.hparams, c.spec.implementation) for c in plan.all_cells)) or ["{}"]
    body = []
    for v in plan.variants:
        for hp in settings:
            hp_dict = json.loads(hp)
            label = v + (" [" + ", ".join(f"{k}={x}" for k, x in sorted(hp_dict.items())) + "]" if hp_dict else "")
            line = [label]
            for t in plan.tasks:
                line.append(_table_cell(plan, by.get((v, hp, t), []), v, t))
            body.append(line)
    return header, body


def _table_cell(plan: Plan, rs: list[dict[str, Any]], variant: str, task: str) -> str:
    vals = [r["primary_value"] for r in rs if r["status"] == "done" and r["primary_value"] is not None]
    if not rs:
        skip = next((s for s in plan.skipped if s["variant"] == variant and s["task"] == task), None)
        return "n/a" if skip else "-"
    if not vals:
        return ", ".join(sorted({r["status"] for r in rs}))
    mean = sum(vals) / len(vals)
    text = f"{mean:.4f}"
    if len(vals) > 1:
        sd = (sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)) ** 0.5
        text += f" ± {sd:.4f} (n={len(vals)})"
    bad = Counter(r["status"] for r in rs if r["status"] != "done")
    if bad:
        text += " (" + ", ".join(f"{n} {s}" for s, n in bad.items()) + ")"
    return text


def print_table(header: list[str], body: list[list[str]], stream: Any = None) -> None:
    stream = stream or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(show_lines=False)
        for h in header:
            table.add_column(Text(h))
        for row in body:
            table.add_row(*(Text(x) for x in row))  # plain text: "[lr=0.01]" is not rich markup
        Console(file=stream, width=max(100, sum(len(h) for h in header) + 20)).print(table)
    except ImportError:  # pragma: no cover
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
        for row in [header, *body]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)), file=stream)
