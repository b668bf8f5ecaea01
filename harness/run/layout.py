"""Worker x thread layout: how many processes train cells at once, with how many torch threads each.

Two measurements on the 2-core machine this was written on (shared with other jobs, load
average 2-6) set the rules:

- a tiny cell is dominated by per-step and per-cell fixed costs (Lightning, evaluation, the
  store's transaction), so a second torch thread buys nothing; on a loaded machine it costs a
  lot, because OpenMP threads wait at every barrier for a sibling that another job has
  descheduled (tiny lm: 0.07 s/step on one thread, 0.43-0.62 s on two; small lm: 1.3-1.4 s
  on one, 3.5-4.9 s on two);
- cells are independent, so separate single-thread processes scale with the free cores and
  share a loaded machine gracefully.

So cells train in single-thread workers, one per core, unless a cell is large (about
:data:`LARGE_STEP_FLOPS` per optimiser step, where matmuls split well over threads) and the
machine is otherwise idle: then workers get two threads each (one two-thread worker on 2
cores). Fewer cells than workers, or too little work to pay for starting a pool
(:data:`POOL_MIN_SECONDS`), give fewer workers; so does the memory the machine has free.
A plan's ``workers``/``threads`` (or ``--workers``/``--threads``, or ``OMP_NUM_THREADS`` for
threads) override the automatic choice. Layouts never change results: every cell seeds its
own generators, so only float rounding differs between thread counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modtransfer.core.task import TASKS

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Cell

#: training FLOPs per optimiser step from which a cell counts as large (the ``small`` preset's lm
#: cell is about 4e10, the ``tiny`` one 1.6e9)
LARGE_STEP_FLOPS = 1e10
#: torch threads per worker for large cells on an idle machine
LARGE_CELL_THREADS = 2
#: estimated serial seconds below which a run stays in this process (a pool's start-up, importing
#: torch and Lightning in each worker, costs a few seconds on a loaded machine)
POOL_MIN_SECONDS = 30.0
#: a rough single-thread fp32 rate and fixed costs, for the serial-time estimate only
CORE_FLOPS = 3e10
STEP_OVERHEAD_S = 0.004
CELL_OVERHEAD_S = 0.5
#: memory of a warm worker (Python, torch, Lightning, W&B) before its model, in bytes
WORKER_BASE_BYTES = 700 * 2**20


@dataclass(frozen=True)
class Layout:
    """``workers`` processes x ``threads`` torch threads each, and why."""

    workers: int
    threads: int
    reason: str

    @property
    def executor(self) -> str:
        """The executor ``auto`` runs: this process for one worker, else the worker pool."""
        return "local" if self.workers == 1 else "processes"

    def describe(self) -> str:
        w = "1 worker (this process)" if self.workers == 1 else f"{self.workers} worker processes"
        return f"{w} x {self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def machine_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


@dataclass(frozen=True)
class CellCost:
    """A rough size of one cell: training FLOPs per step, steps, and bytes of training state."""

    step_flops: float
    steps: int
    state_bytes: float

    @property
    def serial_seconds(self) -> float:
        return self.steps * (STEP_OVERHEAD_S + self.step_flops / CORE_FLOPS) + CELL_OVERHEAD_S


def cell_cost(cell: Cell) -> CellCost:
    """Matmul FLOPs of a training step (3 x forward) from the spec's shape, without building a model.

    Forward per token: ``2 L (4 d^2 + 2 d d_ff)`` for the projections and ``4 L n d`` for
    attention over ``n`` positions, doubled for an encoder-decoder; the output head is left out
    (the vocabulary is known only after the task's data is prepared). Good to a small factor,
    which is all a layout needs.
    """
    spec, budget = cell.spec, cell.budget
    task_cls = TASKS.get(cell.task)
    config = {**getattr(task_cls, "default_config", {}), **cell.task_config}
    n = next((int(config[k]) for k in ("seq_len", "max_len", "positions") if isinstance(config.get(k), int)),
             spec.max_len)
    d, layers = spec.d_model, spec.n_layers
    per_token = 2 * layers * (4 * d * d + 2 * d * spec.d_ff) + 4 * layers * n * d
    if getattr(task_cls, "topology", "decoder") == "encoder_decoder":
        per_token *= 2
    tokens = budget.batch_size * n
    params = layers * (4 * d * d + 2 * d * spec.d_ff)
    activations = 16 * tokens * d * layers * 4  # about 16 saved d-wide tensors per layer, fp32
    return CellCost(3.0 * per_token * tokens, budget.steps, 16.0 * params + activations)


def _costs(cells: Iterable[Cell]) -> list[CellCost]:
    return [cell_cost(c) for c in cells]


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def choose_layout(cells: Iterable[Cell], *, workers: int | None = None, threads: int | None = None,
                  cores: int | None = None, load: float | None = None, memory: int | None = None,
                  device: str = "cpu", env_threads: bool = True, costs: list[CellCost] | None = None) -> Layout:
    """The layout for training ``cells``: ``workers``/``threads`` where given, the rest chosen.

    ``cores``, ``load`` (1-minute load average) and ``memory`` (bytes available) default to
    this machine's; ``env_threads``: an ``OMP_NUM_THREADS`` in the environment counts as a
    given ``threads``. On a GPU one worker drives the device. ``costs``: the sizes of the jobs
    when they are not one per cell (a stacked group of seeds is one job, :mod:`modtransfer.run.stacking`).
    """
    cores = machine_cores() if cores is None else cores
    load = load_average() if load is None else load
    memory = available_memory() if memory is None else memory
    costs = _costs(cells) if costs is None else costs
    why = ["workers set"] if workers is not None else []
    if threads is None and env_threads and _env_threads():
        threads = _env_threads()
        why.append(f"threads from OMP_NUM_THREADS={threads}")
    elif threads is not None:
        why.append("threads set")
    if device.startswith("cuda") or device == "mps":
        w = workers or 1
        return Layout(w, threads or max(1, cores // w), "; ".join(why + [f"one worker drives the {device} device"]))
    if not costs:
        return Layout(workers or 1, threads or 1, "; ".join(why + ["no cells to train"]))
    top = max(c.step_flops for c in costs)
    large, busy = top >= LARGE_STEP_FLOPS, load > cores / 2
    why.append(f"{'large' if large else 'small'} cells (up to {top / 1e9:.2g} GFLOP per step), {cores} cores, "
               f"load {load:.1f}{' (busy)' if busy else ''}")
    auto_threads = threads is None
    if threads is None:
        wanted = LARGE_CELL_THREADS if large and not busy else 1
        threads = max(1, min(wanted, cores // (workers or 1)))
    if workers is None:
        workers, limits = _auto_workers(costs, threads, cores, memory)
        why.extend(limits)
        if auto_threads and large and not busy and workers * threads < cores:
            threads = max(1, cores // workers)   # spare cores go to a large cell's threads
    if workers * threads > cores:
        why.append(f"warning: {workers * threads} threads on {cores} cores oversubscribes them")
    return Layout(workers, threads, "; ".join(why))


def _auto_workers(costs: list[CellCost], threads: int, cores: int, memory: int | None) -> tuple[int, list[str]]:
    """Workers for these cells at ``threads`` each, and the limits that applied, in words."""
    serial = sum(c.serial_seconds for c in costs)
    want = max(1, cores // threads)
    limits = []
    if len(costs) < want:
        want = len(costs)
        limits.append(f"{len(costs)} cell{'s' if len(costs) != 1 else ''}")
    if memory is not None:
        per_worker = WORKER_BASE_BYTES + max(c.state_bytes for c in costs)
        fit = max(1, int(memory // per_worker))
        if fit < want:
            want = fit
            limits.append(f"memory for {fit} ({memory / 2**30:.1f} GiB free)")
    if want > 1 and serial < POOL_MIN_SECONDS:
        limits.append(f"~{serial:.0f} s of work, too little for a worker pool")
        want = 1
    return want, limits
