"""``modtransfer bench seeds``: seeds per hour, stacked vs one by one, measured side by side in one run.

For each task, K seeds of the baseline cell (the task's default budget at the size preset, or
``--steps``) train twice in this process on the same threads: one seed at a time
(:func:`modtransfer.run.cell.run_cell`, what a cell that cannot stack does) and as one stacked
model (:func:`modtransfer.run.group.run_cells`), in alternating order over ``--rounds``. Printed per
task: seeds per hour of each path and their ratio (wall time, start-up and evaluation included),
the largest relative difference of the members' first 20 training losses from the one-seed runs
(fp32: both paths compute the same maths), and where a step's time goes, one seed alone vs a
stacked member (matmuls, attention, optimiser, the rest), from the PyTorch profiler.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from modtransfer.core.errors import UserError

#: Operator names by share of a step (the PyTorch profiler's self CPU time).
CATEGORIES = {"matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul"),
              "attention": ("scaled_dot_product",), "optimiser": ("adam",)}


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="modtransfer bench seeds", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="regression,lm,mt", help="tasks (comma-separated; default regression,lm,mt)")
    ap.add_argument("--seeds", type=int, default=8, help="members of the stacked model (default 8)")
    ap.add_argument("--steps", type=int, help="steps per cell (default: the task's default budget)")
    ap.add_argument("--size", default="tiny", help="size preset (default tiny)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as one worker of the layout)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the two paths (default 1)")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-step breakdown")
    args = ap.parse_args(argv)
    if not 2 <= args.seeds <= 64:
        raise UserError(f"--seeds must be between 2 and 64, got {args.seeds}")
    if args.steps is not None and args.steps < 20:
        raise UserError(f"--steps must be >= 20 (the first 20 losses are compared), got {args.steps}")
    if args.threads < 1 or args.rounds < 1:
        raise UserError("--threads and --rounds must be >= 1")
    return args


def baseline_cells(task: str, seeds: int, size: str, steps: int | None) -> list[Any]:
    """The baseline's cells of ``task`` for seeds 0..seeds-1, W&B off, ``steps`` when given."""
    from modtransfer.run.plan import load_plan

    plan = load_plan({"name": "bench-seeds", "size": size, "seeds": seeds, "variants": [], "tasks": [task],
                      "wandb": {"mode": "disabled"}})
    cells = [c for c in plan.cells if c.variant == "baseline"]
    if steps is not None:
        cells = [dataclasses.replace(c, budget=c.budget.replace(steps=steps)) for c in cells]
    return cells


def time_paths(cells: list[Any], rounds: int, run_dir: Path) -> dict[str, Any]:
    """Wall seconds of the one-by-one and the stacked path (alternating), and their rows."""
    from modtransfer.run.cell import run_cell
    from modtransfer.run.group import run_cells

    cfg = {"mode": "disabled"}
    seconds = {"one_by_one": 0.0, "stacked": 0.0}
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        order = ["one_by_one", "stacked"] if r % 2 == 0 else ["stacked", "one_by_one"]
        for path in order:
            t = time.perf_counter()
            if path == "one_by_one":
                rows[path] = [run_cell(c, run_dir, wandb_cfg=cfg) for c in cells]
            else:
                rows[path] = list(run_cells(cells, run_dir, wandb_cfg=cfg))
            seconds[path] += time.perf_counter() - t
    return {"seconds": seconds, "rows": rows}


def first_losses_gap(cells: list[Any], run_dir: Path, n: int = 20) -> float:
    """Largest relative difference of the first ``n`` training losses, stacked vs one seed at a time."""
    from modtransfer.run import cell as cell_module
    from modtransfer.run.group import run_cells

    short = [dataclasses.replace(c, budget=c.budget.replace(steps=n, eval_every=0)) for c in cells]
    saved = cell_module.LOG_EVERY
    cell_module.LOG_EVERY = 1  # a curve point per step
    try:
        alone = [cell_module.run_cell(c, run_dir, wandb_cfg={"mode": "disabled"}) for c in short]
        stacked = list(run_cells(short, run_dir, wandb_cfg={"mode": "disabled"}))
    finally:
        cell_module.LOG_EVERY = saved
    if any((r.get("env") or {}).get("stack", {}).get("members", 1) == 1 for r in stacked):
        return float("nan")
    gap = 0.0
    for a, b in zip(alone, stacked, strict=True):
        la = [p["train_loss"] for p in a["curve"] if p.get("train_loss") is not None]
        lb = [p["train_loss"] for p in b["curve"] if p.get("train_loss") is not None]
        gap = max([gap] + [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la[:n], lb[:n], strict=True)])
    return gap


def step_breakdown(cells: list[Any], steps: int = 6) -> dict[str, dict[str, float]]:
    """Milliseconds per seed-step by category: one seed alone vs a stacked member (profiler, CPU)."""
    import torch
    from torch.profiler import profile

    from modtransfer.core.model import build
    from modtransfer.core.task import TASKS
    from modtransfer.run.stacked import StackedCellModule, stack_batches

    base = cells[0]
    task = TASKS.get(base.task)(base.task_config, None)
    task.prepare()
    spec = task.configure_spec(base.spec)
    models = [build(spec, task.topology, seed=c.seed) for c in cells]
    streams = [iter(task.train_batches(c.seed, base.budget.batch_size)) for c in cells]
    stacked = StackedCellModule(models[0], models, task, base.budget, [[] for _ in cells], 25)
    alone = build(spec, task.topology, seed=cells[0].seed)
    opts = {"alone": torch.optim.AdamW(alone.parameters(), lr=1e-4, fused=True),
            "stacked": torch.optim.AdamW(list(stacked.state.params.values()), lr=1e-4, fused=True)}

    def step(which: str) -> None:
        if which == "alone":
            loss = task.loss(alone, next(streams[0]))
        else:
            loss = stacked.member_losses(stack_batches(task, [next(s) for s in streams])).sum()
        opts[which].zero_grad()
        loss.backward()
        opts[which].step()

    out = {}
    for which, per in (("alone", 1), ("stacked", len(cells))):
        for _ in range(2):
            step(which)
        with profile() as prof:
            for _ in range(steps):
                step(which)
        out[which] = _categorise(prof.key_averages(), steps * per)
    return out


def _categorise(events: Any, seed_steps: int) -> dict[str, float]:
    shares = dict.fromkeys([*CATEGORIES, "other"], 0.0)
    for e in events:
        name = e.key.lower()
        cat = next((c for c, keys in CATEGORIES.items() if any(k in name for k in keys)), "other")
        shares[cat] += e.self_cpu_time_total / 1000.0
    shares = {k: v / seed_steps for k, v in shares.items()}
    shares["total"] = sum(shares.values())
    return shares


def main(argv: list[str] | None = None) -> int:
    import torch

    from modtransfer.builtins import load_builtins

    args = _args(argv)
    load_builtins()
    torch.set_num_threads(args.threads)
    print(f"bench seeds: {args.seeds} seeds of the baseline per task, size {args.size}, {args.threads} thread(s), "
          f"{args.rounds} round(s); seeds per hour from wall time (start-up and evaluation included)")
    print("| task | steps | one by one (seeds/h) | stacked (seeds/h) | stacked / one by one | first-20-loss gap |")
    print("|---|---|---|---|---|---|")
    details = []
    with tempfile.TemporaryDirectory(prefix="modtransfer-bench-seeds-") as tmp:
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            cells = baseline_cells(task, args.seeds, args.size, args.steps)
            gap = first_losses_gap(cells, Path(tmp))
            timed = time_paths(cells, args.rounds, Path(tmp))
            per_hour = {k: 3600.0 * args.seeds * args.rounds / v for k, v in timed["seconds"].items()}
            print(f"| {task} | {cells[0].budget.steps} | {per_hour['one_by_one']:.0f} | {per_hour['stacked']:.0f} | "
                  f"{per_hour['stacked'] / per_hour['one_by_one']:.2f}x | {gap:.1e} |", flush=True)
            if not args.no_profile:
                details.append((task, step_breakdown(cells)))
    for task, parts in details:
        print(f"\n{task}: ms per seed-step (profiler, self CPU time), one seed alone vs a stacked member")
        for cat in [*CATEGORIES, "other", "total"]:
            a, s = parts["alone"][cat], parts["stacked"][cat]
            print(f"  {cat:<10} {a:8.2f}  {s:8.2f}  ({s / a:.2f}x)" if a else f"  {cat:<10} {a:8.2f}  {s:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
