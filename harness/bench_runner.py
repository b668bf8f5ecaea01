"""Runner overhead: how much of a benchmark's wall time is spent training cells.

    python -m modtransfer.bench_runner [--cells 24] [--workers 2] [--steps 50] [--executors local,processes]

Runs one plan of tiny regression cells (the baseline on ``--cells`` paired seeds, W&B
disabled, so the numbers measure the harness and not the logger) once per executor, each into
a fresh run folder, and prints per executor:

- ``train/wall``: the sum of the cells' training-loop seconds (``train_s``) over the wall time
  of the whole run (executor start-up, imports, model building, evaluation and store writes
  included). 1.0 would be a serial executor with no overhead; a parallel one can reach about
  ``workers``, so ``per worker`` divides by it.
- ``startup_s``: seconds from a cell's start to its first training step (median over cells,
  and the first cell's, which pays the imports in a fresh worker).

Nothing is asserted: this is a measurement to quote, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def bench_plan(cells: int, steps: int) -> dict[str, Any]:
    return {
        "name": "bench-runner", "size": "tiny", "seeds": cells, "variants": [], "tasks": ["regression"],
        "spec": {"d_model": 32, "n_layers": 1, "d_ff": 64},
        "task_budget": {"regression": {"steps": steps, "batch_size": 8, "eval_batches": 2}},
        "wandb": {"mode": "disabled"},
    }


def measure(executor: str, cells: int, steps: int, workers: int, root: Path) -> dict[str, Any]:
    """Run the plan with one executor into a fresh folder; returns the measured figures."""
    from .plan import load_plan
    from .runner import execute
    from .store import Store

    plan = load_plan(bench_plan(cells, steps))
    run_dir = root / executor
    started = time.perf_counter()
    summaries = execute(plan, run_dir, plan.cells, executor=executor, workers=workers, device="cpu")
    wall = time.perf_counter() - started
    rows = Store(run_dir / "results.sqlite").rows()
    statuses = sorted({s["status"] for s in summaries})
    train = [r["train_s"] for r in rows if r["train_s"] is not None]
    startup = [r["startup_s"] for r in rows if r["startup_s"] is not None]
    n_workers = 1 if executor == "local" else workers
    return {
        "executor": executor, "workers": n_workers, "cells": len(rows), "statuses": statuses, "wall_s": wall,
        "train_s": sum(train), "ratio": sum(train) / wall, "per_worker": sum(train) / wall / n_workers,
        "startup_median": statistics.median(startup) if startup else float("nan"),
        "startup_first": rows[0]["startup_s"] if rows else float("nan"),
        "cell_wall_median": statistics.median(r["wall_s"] for r in rows) if rows else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modtransfer.bench_runner", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=24, help="cells in the plan (>= 20 for a quotable figure)")
    p.add_argument("--workers", type=int, default=2, help="workers of the processes (and ray) executor")
    p.add_argument("--steps", type=int, default=50, help="training steps per cell")
    p.add_argument("--executors", default="local,processes", help="comma-separated: local, processes, ray")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the local executor (0: torch's default); workers use cores/workers")
    args = p.parse_args(argv)
    if args.cells < 1 or args.workers < 1 or args.steps < 1:
        p.error("--cells, --workers and --steps must be >= 1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.cells} cells x {args.steps} steps (regression, d_model 32, 1 layer, batch 8, W&B disabled); "
          f"{os.cpu_count()} cores, local executor on {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        for executor in [e.strip() for e in args.executors.split(",") if e.strip()]:
            r = measure(executor, args.cells, args.steps, args.workers, Path(tmp))
            results.append(r)
            print(f"{executor:<10} x{r['workers']}: {r['cells']} cells {'/'.join(r['statuses'])} in "
                  f"{r['wall_s']:.1f} s; train {r['train_s']:.1f} s; train/wall {r['ratio']:.2f} "
                  f"({r['per_worker']:.2f} per worker); startup_s median {r['startup_median']:.3f} "
                  f"(first cell {r['startup_first']:.2f}); cell wall median {r['cell_wall_median']:.2f} s",
                  flush=True)
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(f"{r['executor']} x{r['workers']} finished the plan in {r['wall_s'] / base['wall_s']:.2f} x the wall "
                  f"time of {base['executor']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
