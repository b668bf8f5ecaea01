"""Does bf16 autocast train like fp32? Paired learning curves and final metrics, one table.

    modtransfer bench precision [--tasks regression,lm] [--seeds 3] [--size tiny] [--steps N]
                                [--device cpu|cuda] [--threads T] [--json FILE] [--markdown]

For each task and seed the baseline cell trains twice, in fp32 and in bf16 mixed precision
(:mod:`modtransfer.core.precision`), with the same initial weights and batches (the same seed), through
the cell's own LightningModule and Trainer (``make_module``, ``make_trainer``: what ``run_cell``
fits), W&B off; the two precisions alternate which goes first, seed by seed. Per task it prints:

* the primary metric's mean and seed SD in each precision;
* mean Δ (bf16 - fp32, paired) and mean |Δ|, against the task's seed-to-seed noise (its declared
  ``noise_sd`` at the default budget and tiny size, else the SD measured here over fp32 seeds);
* the learning curves' gap: the mean over logged steps and seeds of |Δ train loss|, over the
  mean over steps of the fp32 seed SD of the train loss;
* bf16 / fp32 training tokens per second (median over seeds of the paired ratio).

Verdict ``agree`` when both gaps (final |Δ|, curve |Δ|) are within one noise SD. Nothing is
asserted: the speed of bf16 at the small size is ``modtransfer bench speed --precision bf16``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modtransfer.core.precision import cpu_bf16_flag, resolve_precision

if TYPE_CHECKING:
    from modtransfer.core.task import Task
    from modtransfer.run.plan_types import Cell

PRECISIONS = ("fp32", "bf16")


def fit(cell: Cell, task: Task, device: str) -> dict[str, Any]:
    """Train ``cell`` as ``run_cell`` does (no logger, no row): status, metrics, train-loss curve, tokens/s."""
    from modtransfer.core.model import build
    from modtransfer.run.cell import LOG_EVERY
    from modtransfer.run.training import lightning_api, make_datamodule, make_module, make_trainer

    L = lightning_api()
    spec = task.configure_spec(cell.spec)
    L.seed_everything(cell.seed, workers=False, verbose=False)
    model = build(spec, task.topology)
    val = task.val_batches(cell.seed, cell.budget.batch_size, cell.budget.eval_batches)
    log_every = max(1, min(LOG_EVERY, cell.budget.steps // 10 or 1))
    t_start = time.perf_counter()
    module = make_module(model, task, cell, val, log_every, t_start)
    trainer = make_trainer(cell.budget, device, None, log_every, precision=cell.precision)
    trainer.fit(module, datamodule=make_datamodule(task, cell.seed, cell.budget.batch_size))
    train_s = time.perf_counter() - (module.first_step_at or t_start)
    steps = trainer.global_step
    module.flush(steps, final=True)
    metrics = module.evaluate(steps) if module.status == "done" else {}
    return {"status": module.status, "primary": metrics.get(task.primary_metric), "metrics": metrics,
            "curve": {c["step"]: c["train_loss"] for c in module.curve if c.get("train_loss") is not None},
            "tok_s": module.tokens / max(train_s, 1e-9)}


def _sd(xs: list[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) > 1 else None


def compare(task: Task, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Paired statistics of one task's fp32 and bf16 runs (lists in seed order)."""
    fp32, bf16 = runs["fp32"], runs["bf16"]
    pairs = [(a, b) for a, b in zip(fp32, bf16, strict=True) if a["primary"] is not None and b["primary"] is not None]
    diffs = [b["primary"] - a["primary"] for a, b in pairs]
    measured_sd = _sd([a["primary"] for a, _ in pairs])
    noise = task.noise_sd or measured_sd
    steps = sorted(set.intersection(*(set(r["curve"]) for r in fp32 + bf16))) if fp32 else []
    steps = [s for s in steps if s > 0]  # step 0 is the same model in both precisions
    curve_gap = statistics.mean(abs(b["curve"][s] - a["curve"][s]) for a, b in zip(fp32, bf16, strict=True)
                                for s in steps) if steps else None
    sds = [_sd([a["curve"][s] for a in fp32]) for s in steps]
    known = [s for s in sds if s is not None]
    curve_sd = statistics.mean(known) if sds and len(known) == len(sds) else None
    out = {
        "task": task.name, "metric": task.primary_metric, "seeds": len(fp32), "pairs": len(pairs),
        "failed": [r["status"] for r in fp32 + bf16 if r["status"] != "done"],
        "fp32_mean": statistics.mean(a["primary"] for a, _ in pairs) if pairs else None, "fp32_sd": measured_sd,
        "bf16_mean": statistics.mean(b["primary"] for _, b in pairs) if pairs else None,
        "bf16_sd": _sd([b["primary"] for _, b in pairs]), "noise_sd": noise,
        "noise_source": "declared noise_sd" if task.noise_sd else "fp32 SD here",
        "mean_diff": statistics.mean(diffs) if diffs else None,
        "mean_abs_diff": statistics.mean(abs(d) for d in diffs) if diffs else None,
        "curve_abs_diff": curve_gap, "curve_sd": curve_sd,
        "speedup": statistics.median(b["tok_s"] / a["tok_s"] for a, b in zip(fp32, bf16, strict=True)),
    }
    final_ok = out["mean_abs_diff"] is not None and noise is not None and out["mean_abs_diff"] <= noise
    curve_ok = curve_gap is not None and curve_sd is not None and curve_gap <= curve_sd
    out["verdict"] = "agree" if final_ok and curve_ok and not out["failed"] else "differ"
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (task, seed, precision) cell, interleaved; the per-task comparisons."""
    from modtransfer.core.task import TASKS
    from modtransfer.run.plan import load_plan

    device = args.device
    results = []
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        cells = {}
        for prec in PRECISIONS:
            raw: dict[str, Any] = {"name": "bench-precision", "size": args.size, "tasks": [name],
                                   "variants": ["baseline"], "seeds": args.seeds, "precision": prec,
                                   "wandb": {"mode": "disabled"}}
            if args.steps:
                raw["budget"] = {"steps": args.steps}
            cells[prec] = load_plan(raw).cells
        task = TASKS.get(name)(cells["fp32"][0].task_config, args.cache_dir)
        task.prepare()
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PRECISIONS}
        for i in range(args.seeds):
            for prec in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
                runs[prec].append(fit(cells[prec][i], task, device))
                print(f"  {name} seed {i} {prec}: {runs[prec][-1]['primary']}", file=sys.stderr, flush=True)
        results.append(compare(task, runs))
    return {"device": device, "size": args.size, "seeds": args.seeds, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_bf16": cpu_bf16_flag(), "tasks": results}


def _f(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The table ``bench precision`` prints (``markdown``: as Markdown, as the README shows it)."""
    header = ["task", "metric", "seeds", "fp32 mean ± SD", "bf16 mean ± SD", "mean Δ", "mean |Δ|", "noise SD",
              "curve |Δ|", "curve SD", "bf16/fp32 tok/s", "verdict"]
    body = [[r["task"], r["metric"], str(r["seeds"]), f"{_f(r['fp32_mean'])} ± {_f(r['fp32_sd'])}",
             f"{_f(r['bf16_mean'])} ± {_f(r['bf16_sd'])}", _f(r["mean_diff"], "+.4f"), _f(r["mean_abs_diff"]),
             _f(r["noise_sd"]), _f(r["curve_abs_diff"]), _f(r["curve_sd"]), _f(r["speedup"], ".3f"),
             r["verdict"] + (f" ({len(r['failed'])} cells failed)" if r["failed"] else "")] for r in res["tasks"]]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        if markdown:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

    sources = sorted({r["noise_source"] for r in res["tasks"]})
    return "\n".join([
        f"bench precision: bf16 autocast vs fp32, baseline, size {res['size']}, {res['seeds']} paired seeds; "
        f"{res['device']} (native bf16: {res['cpu_bf16'] or 'none'}), {res['threads']} threads, torch {res['torch']}",
        "Δ = bf16 - fp32 on the same seed (same initial weights and batches); curve |Δ| = mean over logged steps and "
        f"seeds of |Δ train loss|, curve SD = mean over steps of its fp32 seed SD; noise SD: {', '.join(sources)}",
        "", line(header), "|" + "---|" * len(header) if markdown else line(["-" * w for w in widths]),
        *(line(b) for b in body),
    ])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="modtransfer bench precision", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="regression,lm", help="comma-separated task names (default: regression,lm)")
    ap.add_argument("--seeds", type=int, default=3, help="paired seeds per task (default 3)")
    ap.add_argument("--size", default="tiny", help="size preset (default tiny, where the tasks' budgets learn)")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default: each task's budget)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's)")
    ap.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from modtransfer.core.errors import UserError

    if args.seeds < 2 or args.steps < 0:
        raise UserError("--seeds must be >= 2 (a seed SD needs two) and --steps >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    resolve_precision("bf16", args.device)  # a CPU without native bf16: one line, before anything trains
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    print(format_table(res, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
