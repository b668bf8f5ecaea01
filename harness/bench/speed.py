"""Training speed: harness vs plain loop vs x-transformers, MFU, memory and start-up, one table.

    modtransfer bench speed [--device cpu|cuda] [--size tiny|small|base] [--steps N] [--repeats R]
                            [--variants LIST] [--compile] [--batch-size B] [--warmup W] [--threads T]
                            [--precision auto|fp32|bf16] [--remeasure-peak] [--task lm] [--json FILE]
                            [--markdown]

For the baseline decoder LM cell and a few representative variants (a gated FFN, RoPE, the
adaptive softmax, a Switch mixture of experts), all measured in one run:

* **harness tok/s**: the cell's LightningModule (``make_module``) under the cell's Trainer
  (``make_trainer``), exactly what ``run_cell`` fits, W&B off. **plain tok/s**: the same model
  (same seed, so the same initial weights), the same batches, AdamW parameter groups, schedule and
  gradient clipping (taken from the cell's own ``configure_optimizers``) in a bare PyTorch loop.
* **x-transformers** (baseline row only): ``TransformerWrapper`` + ``Decoder`` of equal width,
  depth, heads, sequence length, batch and vocabulary, ``ff_mult = d_ff / d_model`` with ReLU and
  no biases, tied embedding, sinusoidal positions, trained in the same plain loop, once with its
  default attention (explicit attention matrix) and once with ``attn_flash=True`` (PyTorch SDPA).
* **precision** (``--precision``, a plan's ``precision``): every path trains in it (bf16 autocast or
  fp32; ``auto`` is bf16 on CUDA, fp32 on CPU). In bf16 an extra plain loop of our model in fp32
  runs in the same lockstep: **bf16/fp32** is our plain loop's speed-up in bf16 over it.
* **MFU**: 3 x forward FLOPs per token (``modtransfer.core.model.count_flops``) x harness tok/s over the
  machine's matmul peak in the same precision (:func:`modtransfer.core.peak.machine_peak`: the best
  ``torch.mm`` FLOP/s over sizes and repeats, measured once per machine and cached), the same
  peak a ``run_cell`` row's ``mfu`` divides by.
* **peak memory** of one cell: ``run_cell`` in a fresh process, peak RSS growth on CPU,
  ``torch.cuda.max_memory_allocated`` growth on CUDA.
* **start-up**: ``startup_s`` of real ``run_cell`` rows (cell start to first step) in this warm
  process, the cold first cell in the header; and the wall time of ``modtransfer ls variants`` in
  a subprocess with the accounting cache warm.

The paths advance in lockstep, so the load other processes put on a shared machine hits both
sides of every ratio alike: each iteration is one harness step, then (inside a Trainer callback,
whose time is subtracted from the harness step) one step of each plain loop, their order
alternating. Ratios and MFU are taken per iteration; the table shows medians over the
iterations after the warm-up, then medians over repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modtransfer.bench.speed_loops import Clock, build_xtransformers, lockstep_fit, xtransformers_version
from modtransfer.bench.speed_table import aggregate, format_table, median_of, summarise_fit
from modtransfer.core.peak import machine_peak
from modtransfer.core.precision import resolve_precision

if TYPE_CHECKING:
    from modtransfer.core.spec import ModelSpec
    from modtransfer.core.task import Task

DEFAULT_VARIANTS = "baseline,swiglu,rope,adaptive_softmax,switch"
MIB = 2**20


# -- memory and start-up --------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_probe(args: argparse.Namespace) -> int:
    """(In a fresh process) run one short cell and print its peak memory growth as JSON."""
    from modtransfer.run.cell import run_cell
    from modtransfer.run.envinfo import environment
    from modtransfer.run.training import lightning_api

    device = resolve_device(args.device)
    environment(device.type)  # the imports a first cell pays (Lightning, W&B versions) before the reading
    lightning_api()
    import modtransfer.core.model  # noqa: F401
    import modtransfer.tasks  # noqa: F401

    torch.mm(torch.ones(64, 64, device=device), torch.ones(64, 64, device=device))
    plan = make_plan(args, [args.memory_probe], steps=2)
    cell = plan.cells[-1]  # the variant's cell (the plan puts the baseline first)
    method = "cuda max_memory_allocated"
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            row = run_cell(cell, Path(tmp), wandb_cfg={"mode": "disabled"}, cache_dir=args.cache_dir, device="cuda")
            peak = torch.cuda.max_memory_allocated() - before
        else:
            rss = _proc_status_kib("VmRSS")
            if rss is not None and _reset_peak_rss():
                method = "peak RSS growth (VmHWM)"
                row = run_cell(cell, Path(tmp), wandb_cfg={"mode": "disabled"}, cache_dir=args.cache_dir, device="cpu")
                peak = ((_proc_status_kib("VmHWM") or rss) - rss) * 1024
            else:
                import resource

                method = "ru_maxrss growth (lower bound)"
                unit = 1 if sys.platform == "darwin" else 1024
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
                row = run_cell(cell, Path(tmp), wandb_cfg={"mode": "disabled"}, cache_dir=args.cache_dir, device="cpu")
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before
    print(json.dumps({"peak_bytes": int(peak), "method": method, "status": row["status"],
                      "error": (row["error"] or "").splitlines()[:1]}))
    return 0


def cell_memory(args: argparse.Namespace, variant: str) -> tuple[float | None, str]:
    """Peak memory (MiB) of a short cell of ``variant`` in a fresh process, and how it was measured."""
    cmd = [sys.executable, "-m", "modtransfer.bench.speed", "--memory-probe", variant, "--size", args.size,
           "--device", args.device, "--task", args.task, "--precision", args.precision]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, f"probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    out = json.loads(lines[-1])
    if out["status"] != "done":
        return None, f"probe cell {out['status']}: {out['error']}"
    return out["peak_bytes"] / MIB, out["method"]


def ls_command() -> list[str]:
    script = Path(sys.executable).with_name("modtransfer")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "modtransfer"]


def ls_wall_seconds(repeats: int) -> list[float]:
    """Wall seconds of ``modtransfer ls variants`` (a first untimed run warms the accounting cache)."""
    cmd = [*ls_command(), "ls", "variants"]
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-300:]}")
        if i:
            times.append(time.perf_counter() - start)
    return times


# -- the benchmark --------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        from modtransfer.core.errors import UserError

        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def make_plan(args: argparse.Namespace, variants: list[str], steps: int) -> Any:
    from modtransfer.run.plan import load_plan

    budget: dict[str, Any] = {"steps": steps, "eval_batches": 1}
    if args.batch_size:
        budget["batch_size"] = args.batch_size
    return load_plan({"name": "bench-speed", "size": args.size, "tasks": [args.task], "variants": variants,
                      "budget": budget, "wandb": {"mode": "disabled"}, "precision": args.precision})



def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="modtransfer bench speed", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="small", help="size preset (tiny, small, base)")
    ap.add_argument("--task", default="lm", help="task of the cells (default: lm, the decoder LM)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per fit (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every fit")
    ap.add_argument("--repeats", type=int, default=3, help="fits per variant (medians over them)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default: {DEFAULT_VARIANTS})")
    ap.add_argument("--batch-size", type=int, default=0, help="default: the task's budget")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the stacks (x-transformers: whole model)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training precision of every path (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--remeasure-peak", action="store_true", help="measure the matmul peak again (keeps the best)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (one process each)")
    ap.add_argument("--no-ls", action="store_true", help="skip timing `modtransfer ls variants`")
    ap.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's)")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        from modtransfer.core.errors import UserError

        raise UserError("--steps and --repeats must be >= 1 and --warmup >= 0")
    device = resolve_device(args.device)
    resolve_precision(args.precision, device.type)  # bf16 on a CPU without it: one line, before anything runs
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = run_benchmark(args, device, variants)
    print(format_table(results, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def run_benchmark(args: argparse.Namespace, device: torch.device, variants: list[str]) -> dict[str, Any]:
    """Measure every column for every variant; returns the numbers the table prints."""
    from modtransfer.core.task import TASKS

    iterations = args.warmup + args.steps + 1
    plan = make_plan(args, variants, steps=iterations)
    if plan.skipped:
        from modtransfer.core.errors import UserError

        raise UserError("; ".join(f"variant {s['variant']} does not apply to task {s['task']}: {s['reason']}"
                                  for s in plan.skipped))
    variants = list(plan.variants)  # canonical names, baseline first
    cells = {c.variant: c for c in plan.cells}
    task = TASKS.get(args.task)(cells["baseline"].task_config, args.cache_dir)
    task.prepare()
    xtf_paths, xtf_note = _xtf_paths(args, task, cells["baseline"].spec)
    peak = machine_peak(device, args.precision, args.cache_dir, remeasure=args.remeasure_peak)
    seq = int(task.config.get("seq_len") or task.config.get("max_len") or cells["baseline"].spec.max_len)
    rows = _count_rows(task, cells, variants, seq)
    cold_startup_s = _measure(args, device, task, cells, variants, rows, xtf_paths, peak["flops"])
    for v in variants:
        rows[v].update(aggregate(rows[v]["repeats"]))
        if not args.no_memory:
            rows[v]["peak_mib"], rows[v]["memory_method"] = cell_memory(args, v)
    ls_times = [] if args.no_ls else ls_wall_seconds(args.repeats)
    spec = task.configure_spec(cells["baseline"].spec)
    return {
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "size": args.size, "task": args.task, "batch_size": cells["baseline"].budget.batch_size,
        "seq_len": seq, "shape": {"d_model": spec.d_model, "n_layers": spec.n_layers, "n_heads": spec.n_heads,
                                  "d_ff": spec.d_ff, "vocab_size": spec.vocab_size},
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "compile": args.compile,
        "precision": resolve_precision(args.precision, device.type), "peak_flops": peak["flops"], "peak": peak,
        "xtf_note": xtf_note, "cold_startup_s": cold_startup_s,
        "ls_s": median_of(ls_times), "ls_runs": ls_times, "rows": rows,
    }


def _xtf_paths(args: argparse.Namespace, task: Task, baseline_spec: ModelSpec) -> tuple[list[str], str]:
    """The x-transformers paths of the baseline row (none when not installed or not a decoder LM), and a note."""
    if not (task.topology == "decoder" and task.has_vocab):
        return [], f"x-transformers columns only for a decoder LM task, not {args.task!r}"
    version = xtransformers_version()
    if not version:
        return [], "x-transformers not installed (pip install x-transformers): its columns are skipped"
    model = build_xtransformers(task.configure_spec(baseline_spec), flash=True)
    n_params = sum(p.numel() for p in model.parameters())
    return ["x-tf", "x-tf flash"], f"x-transformers {version} ({n_params / 1e6:.2f}M params at the baseline's shape)"


def _count_rows(task: Task, cells: dict[str, Any], variants: list[str], seq: int) -> dict[str, dict[str, Any]]:
    """Each variant's row, started with its parameters and forward FLOPs per token."""
    from modtransfer.core.model import count_flops, count_params

    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        spec = task.configure_spec(cells[v].spec)
        rows[v] = {"params": count_params(spec, task.topology), "flops_per_token": count_flops(spec, task.topology, seq),
                   "repeats": []}
    return rows


def _measure(args: argparse.Namespace, device: torch.device, task: Task, cells: dict[str, Any], variants: list[str],
             rows: dict[str, dict[str, Any]], xtf_paths: list[str], peak_flops: float) -> float | None:
    """The lockstep fits (variant order alternating between repeats), appended to ``rows``; returns the
    cold start-up seconds of the first cell of this process."""
    from modtransfer.run.cell import run_cell

    clock = Clock(device)
    iterations = args.warmup + args.steps + 1
    startup_cell = dataclasses.replace(cells["baseline"], budget=cells["baseline"].budget.replace(steps=2))
    with tempfile.TemporaryDirectory() as tmp:
        cold = run_cell(startup_cell, Path(tmp), wandb_cfg={"mode": "disabled"}, cache_dir=args.cache_dir,
                        device=device.type)
        if cold["status"] != "done":
            raise RuntimeError(f"the start-up cell failed: {cold['error']}")
        for r in range(args.repeats):
            for v in variants if r % 2 == 0 else variants[::-1]:
                warm_cell = dataclasses.replace(cells[v], budget=cells[v].budget.replace(steps=2))
                warm = run_cell(warm_cell, Path(tmp), wandb_cfg={"mode": "disabled"}, cache_dir=args.cache_dir,
                                device=device.type)
                times = lockstep_fit(cells[v], task, device, iterations=iterations,
                                     xtf=xtf_paths if v == "baseline" else [], compile_model=args.compile,
                                     clock=clock, precision=args.precision)
                rows[v]["repeats"].append(summarise_fit(times, rows[v]["flops_per_token"], args.warmup,
                                                        args.steps, warm["startup_s"], peak_flops))
    return cold["startup_s"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
