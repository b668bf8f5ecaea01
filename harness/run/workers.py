"""Training cells in long-lived worker processes.

A worker is started once per run (``spawn``), sets its torch thread count, imports torch,
Lightning, the built-in tasks and the run's plugins once, then trains the groups of cells the
parent sends it, one group at a time, over its own pipe (a group: cells equal but for the seed,
trained as one stacked model where they can, :mod:`modtransfer.run.group`). The worker claims
each cell, and writes each finished cell's row (one transaction) and reports it before the next,
so a killed run loses only the cells in flight. The parent knows which cell each worker holds: a worker that dies while
training one (a segfault, the out-of-memory killer) leaves a ``failed`` row that says so, and a
fresh worker takes its place; the other cells go on.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from multiprocessing import connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.run.row import Row
from modtransfer.run.store import Store

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Cell

#: workers that die before they are ready, in a row, after which the run stops (a broken
#: environment or plugin, not a cell's fault)
MAX_STARTUP_DEATHS = 3


def train_and_record(cell: Cell, run_dir: Path, wandb_cfg: dict[str, Any], cache_dir: str | None,
                     device: str = "auto") -> dict[str, Any]:
    """Claim, train and record one cell; returns a short summary (also used by workers).

    The summary carries ``pid`` (the process that trained the cell) and ``record_s`` (seconds
    the store's transaction took).
    """
    return train_and_record_group([cell], run_dir, wandb_cfg, cache_dir, device)[0]


def train_and_record_group(cells: list[Cell], run_dir: Path, wandb_cfg: dict[str, Any], cache_dir: str | None,
                           device: str = "auto", each: Callable[[dict[str, Any]], None] | None = None,
                           ) -> list[dict[str, Any]]:
    """Claim the cells of one group (equal but for the seed), train the claimed ones together
    (:func:`modtransfer.run.group.run_cells`: stacked where they can) and record each row as it is
    finished, before the next; returns a summary per cell (``each(summary)`` as each is known)."""
    from modtransfer.run.group import run_cells

    store = Store(run_dir / "results.sqlite")
    summaries, claimed = [], []
    for cell in cells:
        if store.claim(cell.cell_id):
            claimed.append(cell)
        else:
            summaries.append({"cell_id": cell.cell_id, "label": cell.label, "status": "skipped", "claimed": False,
                              "pid": os.getpid()})
            if each:
                each(summaries[-1])
    by_id = {c.cell_id: c for c in claimed}
    try:
        for row in run_cells(claimed, run_dir, wandb_cfg=wandb_cfg, cache_dir=Path(cache_dir) if cache_dir else None,
                             device=device):
            started = time.perf_counter()
            store.record(row)
            record_s = time.perf_counter() - started
            cell = by_id.pop(row["cell_id"])
            store.release(cell.cell_id)
            summaries.append(_summary(cell, row, record_s))
            if each:
                each(summaries[-1])
    finally:
        for cell_id in by_id:
            store.release(cell_id)
    return summaries


def _summary(cell: Cell, row: dict[str, Any], record_s: float) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "label": cell.label, "status": row["status"],
            "primary_metric": row["primary_metric"], "primary_value": row["primary_value"],
            "wall_s": row["wall_s"], "train_s": row["train_s"], "startup_s": row["startup_s"],
            "record_s": record_s, "pid": os.getpid(), "stack": (row.get("env") or {}).get("stack"),
            "error": (row["error"] or "").splitlines()[0] if row["error"] else None}


def watch_parent(parent: int, every: float = 1.0) -> None:
    """End this worker when its parent process ``parent`` is gone (killed with -9, say).

    Without it, workers of a killed run go on training cells nobody will record. A worker's
    parent is the run, or the fork server, which ends as soon as the run does.
    """
    import threading

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="modtransfer-parent-watch", daemon=True).start()


def warm_up(threads: int, plugins: list[str]) -> None:
    """Set the torch thread count and import what every cell needs, once per worker."""
    import torch

    torch.set_num_threads(max(1, threads))
    import lightning  # noqa: F401

    from modtransfer.builtins import load_builtins
    from modtransfer.core.plugins import load_plugins

    load_builtins()
    load_plugins(plugins)


def worker_main(conn: connection.Connection, threads: int, plugins: list[str], job: dict[str, Any]) -> None:
    """A worker's life: warm up, say ready, then train each cell it receives until told to stop.

    ``job``: the run folder, W&B settings, cache folder and device of the run.
    """
    watch_parent(os.getppid())
    try:
        warm_up(threads, plugins)
        conn.send({"ready": os.getpid()})
        while True:
            cells = conn.recv()
            if cells is None:
                return
            train_and_record_group(cells, Path(job["run_dir"]), job["wandb"], job["cache_dir"], job["device"],
                                   each=conn.send)
            conn.send({"group_done": True})
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return  # the run was interrupted or ended: its parent reports that


def crashed_row(cell: Cell, error: str) -> dict[str, Any]:
    """The ``failed`` row of a cell whose worker process died while training it."""
    return Row.for_cell(cell, env={"contract_gate": cell.gate}, error=error, steps=None).to_dict()


def death_words(exitcode: int | None) -> str:
    """How a worker ended, in words: ``killed by SIGKILL`` or ``exit code 3``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer, or kill -9)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


class _Worker:
    def __init__(self, ctx: Any, threads: int, plugins: list[str], job: dict[str, Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, threads, plugins, job),
                                name="modtransfer-worker", daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.cells: list[Cell] | None = None   # the group it is training

    def signal_stop(self) -> None:
        """Ask an idle worker to finish; end a busy one (its cell's claim goes stale)."""
        if not self.proc.is_alive():
            return
        if self.cells is None:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        else:
            self.proc.terminate()

    def join(self, grace: float = 5.0) -> None:
        self.proc.join(grace)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(grace)
        self.conn.close()


class WorkerPool:
    """``workers`` long-lived processes of ``threads`` torch threads each, training cells as they come.

    Use as a context manager; :meth:`run` trains a list of cells and may be called again with
    more (the workers stay warm).
    """

    def __init__(self, workers: int, threads: int, plugins: list[str], job: dict[str, Any]) -> None:
        import multiprocessing as mp

        # spawn, not fork: a fork of a process that has run torch's OpenMP pool can hang
        self.ctx = mp.get_context("spawn")
        self.n, self.threads, self.plugins, self.job = max(1, workers), max(1, threads), plugins, job
        self.workers: list[_Worker] = []
        self.startup_deaths = 0

    def __enter__(self) -> WorkerPool:
        self.workers = [self._start() for _ in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.signal_stop()
        for w in self.workers:
            w.join()
        self.workers = []

    def _start(self) -> _Worker:
        return _Worker(self.ctx, self.threads, self.plugins, self.job)

    def run(self, groups: list[list[Cell]], start: Callable[[Cell], None],
            done: Callable[[dict[str, Any]], None]) -> None:
        """Train ``groups`` (lists of cells that train together, :mod:`modtransfer.run.stacking`);
        ``start(cell)`` as a group is handed to a worker, ``done(summary)`` as each cell ends."""
        queue = [list(g) for g in groups]
        while queue or any(w.cells is not None for w in self.workers):
            for w in self.workers:
                if w.cells is None and queue:
                    group = queue.pop(0)
                    try:
                        w.conn.send(group)
                    except (BrokenPipeError, OSError):  # it just died: the group waits for its replacement
                        queue.insert(0, group)
                        continue
                    w.cells = group
                    for cell in group:
                        start(cell)
            waits = [w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers]
            ready = set(connection.wait(waits))
            for w in [x for x in self.workers if x.conn in ready or x.proc.sentinel in ready]:
                if not self._receive(w, done):
                    self._replace(w, queue, done)

    def _receive(self, w: _Worker, done: Callable[[dict[str, Any]], None]) -> bool:
        """Take a worker's message, if any; False when the worker is gone."""
        try:
            if w.conn.poll():
                msg = w.conn.recv()
                if "ready" in msg:
                    w.ready, self.startup_deaths = True, 0
                elif "group_done" in msg:
                    w.cells = None
                else:
                    w.cells = [c for c in (w.cells or []) if c.cell_id != msg.get("cell_id")]
                    done(msg)
                return True
        except (EOFError, OSError):
            pass
        return w.proc.is_alive()

    def _replace(self, w: _Worker, queue: list[list[Cell]], done: Callable[[dict[str, Any]], None]) -> None:
        """A worker died: record its unfinished cells (or hand them on, if the worker never got
        ready) and start another."""
        w.proc.join()
        cells, how = w.cells, death_words(w.proc.exitcode)
        w.conn.close()
        if not w.ready:
            self.startup_deaths += 1
            if cells:
                queue.insert(0, cells)
            if self.startup_deaths >= MAX_STARTUP_DEATHS:
                raise RuntimeError(f"{self.startup_deaths} worker processes in a row died while starting ({how}); "
                                   "see the messages above, or run with --executor local to see the error")
        self.workers[self.workers.index(w)] = self._start()
        for cell in (cells or []) if w.ready else []:
            done(self._record_crash(cell, w.proc.pid, how))

    def _record_crash(self, cell: Cell, pid: int | None, how: str) -> dict[str, Any]:
        store = Store(Path(self.job["run_dir"]) / "results.sqlite")
        row = next(iter(store.rows(cell_id=cell.cell_id)), None)
        if row is None:  # the worker died before it recorded the cell
            error = (f"the worker process (pid {pid}) died while training this cell, {how}; no result. "
                     "Run again with --retry-failed to train it again")
            store.record(crashed_row(cell, error))
            row = crashed_row(cell, error)
        first = (row.get("error") or "").splitlines()[0] if row.get("error") else None
        return {"cell_id": cell.cell_id, "label": cell.label, "status": row["status"],
                "primary_metric": row.get("primary_metric"), "primary_value": row.get("primary_value"),
                "wall_s": row.get("wall_s"), "error": first, "pid": pid, "crashed": True}
