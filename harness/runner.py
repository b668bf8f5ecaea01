"""Executing a plan's cells: in-process, or on a pool of warm worker processes.

Every executor skips cells already in the store, claims a cell before training it, and has
the process that trained the cell write its row (one transaction), so an interrupted run loses
at most the cells in flight, and a cell is never recorded twice.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from .plan import Cell, Plan
from .store import Store

EXECUTORS = ("local", "processes", "ray")


def run_dir_for(plan: Plan, root: str | Path = "runs") -> Path:
    return Path(root) / plan.name


def train_and_record(cell: Cell, run_dir: Path, wandb_cfg: dict[str, Any], cache_dir: str | None,
                     device: str = "auto") -> dict[str, Any]:
    """Claim, train and record one cell; returns a short summary (also used by workers)."""
    from .cell import run_cell

    store = Store(run_dir / "results.sqlite")
    if not store.claim(cell.cell_id):
        return {"cell_id": cell.cell_id, "label": cell.label, "status": "skipped", "claimed": False}
    try:
        row = run_cell(cell, run_dir, wandb_cfg=wandb_cfg, cache_dir=Path(cache_dir) if cache_dir else None,
                       device=device)
        store.record(row)
    finally:
        store.release(cell.cell_id)
    return {"cell_id": cell.cell_id, "label": cell.label, "status": row["status"],
            "primary_metric": row["primary_metric"], "primary_value": row["primary_value"],
            "wall_s": row["wall_s"], "error": (row["error"] or "").splitlines()[0] if row["error"] else None}


_WORKER_PLUGINS: list[str] = []


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """End this worker when the process that started it is gone (killed with -9, say).

    Without it, pool workers of a killed run go on training cells nobody will record.
    """
    import threading

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="modtransfer-parent-watch", daemon=True).start()


def _init_worker(threads: int, plugins: list[str], parent: int | None = None) -> None:
    if parent is not None:
        _watch_parent(parent)
    import torch

    torch.set_num_threads(max(1, threads))
    import lightning  # noqa: F401  (warm the imports once per worker)

    from .components import ensure_builtin_components
    from .plugins import load_plugins

    ensure_builtin_components()
    load_plugins(plugins)
    import modtransfer.tasks  # noqa: F401


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
    plan: Plan, run_dir: Path, cells: Iterable[Cell], *, executor: str = "local", workers: int = 1,
    plugins: list[str] | None = None, cache_dir: str | None = None, device: str = "auto",
    progress: Progress | None = None, on_result: Callable[[dict[str, Any]], None] | None = None,
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Train every given cell not already in the store; returns the cells' summaries."""
    todo = list(cells)
    results: list[dict[str, Any]] = []

    def done(summary: dict[str, Any]) -> None:
        results.append(summary)
        if progress:
            progress.finish(summary)
        if on_result:
            on_result(summary)

    if executor == "local":
        for cell in todo:
            if progress:
                progress.start(cell.label)
            done(train_and_record(cell, run_dir, plan.wandb, cache_dir, device))
        return results
    if executor == "processes":
        threads = max(1, (os.cpu_count() or 1) // workers)
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(threads, list(plugins or []), os.getpid())) as pool:
            pending = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < workers * 2:
                    cell = queue.pop(0)
                    fut = pool.submit(train_and_record, cell, run_dir, plan.wandb, cache_dir, device)
                    pending[fut] = cell
                    if progress and len(pending) <= workers:
                        progress.start(cell.label)
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    pending.pop(fut)
                    done(fut.result())
        return results
    if executor == "ray":
        from .ray_executor import execute_ray

        return execute_ray(plan, run_dir, todo, plugins=list(plugins or []), cache_dir=cache_dir, device=device,
                           done=done, address=ray_address, workers=workers)
    raise ValueError(f"unknown executor {executor!r}")


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
