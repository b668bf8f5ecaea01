"""Harness overhead: the baseline cell through the harness vs a plain PyTorch loop.

    python -m modtransfer.bench_overhead [--task lm] [--size tiny] [--steps 200] [--repeats 3]

Both train the same model (same seed, same initial weights) on the same batches with the
same optimiser (the cell's ``configure_optimizers``), schedule and gradient clipping; the
plain loop has no Lightning, no logging and no evaluation. Prints tokens per second for both
(medians over repeats, alternating the order) and their ratio, measured in one run.
``modtransfer bench speed`` is the fuller benchmark (step-by-step interleaving,
x-transformers, MFU, memory, start-up).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def plain_loop(task, spec, budget, seed: int, cell=None) -> float:
    """Tokens per second of a bare training loop over the task's batches."""
    from .model import build
    from .schedule import lr_lambda

    torch.manual_seed(seed)
    model = build(spec, task.topology)
    if cell is not None:  # the cell's own optimiser (AdamW groups, fused kernel where there is one)
        from .cell import make_module

        config = make_module(model, task, cell, [], 1, time.perf_counter()).configure_optimizers()
        opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, betas=budget.betas, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(budget.schedule, budget.steps, budget.warmup))
    batches = task.train_batches(seed, budget.batch_size)
    model.train()
    tokens = 0
    start = None
    for _ in range(budget.steps):
        batch = next(batches)
        if start is None:
            start = time.perf_counter()
        loss = task.loss(model, batch)
        aux = model.aux_loss()
        if isinstance(aux, torch.Tensor):
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if budget.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
        opt.step()
        sched.step()
        tokens += task.count_tokens(batch)
    return tokens / (time.perf_counter() - start)


def harness_cell(plan, run_dir: Path) -> float:
    from .cell import run_cell

    cell = next(c for c in plan.cells if c.variant == "baseline")
    row = run_cell(cell, run_dir, wandb_cfg={"mode": "disabled"})
    if row["status"] != "done":
        raise SystemExit(f"harness cell {row['status']}: {row['error']}")
    return row["tokens_per_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="lm")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from .plan import load_plan
    from .task import TASKS

    plan = load_plan({"name": "bench-overhead", "size": args.size, "tasks": [args.task], "variants": [],
                      "budget": {"steps": args.steps, "batch_size": args.batch_size, "eval_batches": 1},
                      "wandb": {"mode": "disabled"}})
    cell = plan.cells[0]
    task = TASKS.get(args.task)(cell.task_config)
    task.prepare()
    spec = task.configure_spec(cell.spec)
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = [("harness", ours), ("plain", plain)] if r % 2 == 0 else [("plain", plain), ("harness", ours)]
            for name, sink in order:
                sink.append(harness_cell(plan, Path(tmp)) if name == "harness" else
                            plain_loop(task, spec, cell.budget, cell.seed, cell))
    h, p = statistics.median(ours), statistics.median(plain)
    print(f"task {args.task}, size {args.size}, {args.steps} steps x batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (medians)")
    print(f"harness (Lightning cell) : {h:12.0f} tokens/s")
    print(f"plain PyTorch loop       : {p:12.0f} tokens/s")
    print(f"ratio harness / plain    : {h / p:12.3f}")


if __name__ == "__main__":
    main()
