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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.peak import machine_peak
from modtransfer.core.precision import autocast, resolve_precision

DEFAULT_VARIANTS = "baseline,swiglu,rope,adaptive_softmax,switch"
#: targets at the default size on a 2-core CPU (printed next to the measurements, never asserted)
TARGETS = {"harness/plain": 0.97, "ours/x-tf": 1.15, "mfu": 0.60, "ls_s": 1.0, "startup_s": 1.0}
MIB = 2**20

Batch = dict[str, Any]


# -- timing ---------------------------------------------------------------------------------------
class Clock:
    """Time marks: ``perf_counter`` on CPU; CUDA events on GPU, read once at the end (no host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks (after :meth:`synchronize` on CUDA)."""
        if self.cuda:
            return start.elapsed_time(end) / 1e3
        return end - start

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


# -- training paths -------------------------------------------------------------------------------
def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


class PlainLoop:
    """A bare PyTorch training loop advanced one step at a time.

    forward + loss (under bf16 autocast in bf16, as the cell's ``bf16-mixed``), backward, gradient-norm
    clipping, AdamW step, LR schedule step: what a cell's Trainer does, without Lightning.
    """

    def __init__(self, name: str, model: nn.Module, loss_fn: Callable[[nn.Module, Batch], Tensor],
                 optimizer: torch.optim.Optimizer, scheduler: Any, batches: Iterator[Batch], grad_clip: float,
                 device: torch.device, clock: Clock, count_tokens: Callable[[Batch], int], precision: str) -> None:
        self.name, self.model, self.loss_fn, self.precision = name, model, loss_fn, precision
        self.optimizer, self.scheduler, self.batches = optimizer, scheduler, batches
        self.grad_clip, self.device, self.clock, self.count_tokens = grad_clip, device, clock, count_tokens
        self.marks: list[tuple[Any, Any]] = []
        self.tokens: list[int] = []

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device.type, self.precision)

    def step(self) -> None:
        start = self.clock.mark()
        batch = _to_device(next(self.batches), self.device)
        with self.autocast():
            loss = self.loss_fn(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.marks.append((start, self.clock.mark()))
        self.tokens.append(self.count_tokens(batch))

    def seconds(self) -> list[float]:
        return [self.clock.seconds(s, e) for s, e in self.marks]


def cell_loss(task: Any) -> Callable[[nn.Module, Batch], Tensor]:
    """The loss a cell's ``training_step`` optimises: the task loss plus the model's auxiliary loss."""

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        loss = task.loss(model, batch)
        aux = model.aux_loss()
        return loss + aux if isinstance(aux, Tensor) else loss

    return loss_fn


def xtf_loss(model: nn.Module, batch: Batch) -> Tensor:
    logits = model(batch["x"])
    return F.cross_entropy(logits.flatten(0, -2).float(), batch["y"].flatten())


def xtransformers_version() -> str | None:
    """The installed x-transformers version, or None when it cannot be imported."""
    try:
        import x_transformers  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("x-transformers")
    except PackageNotFoundError:
        return "unknown"


def build_xtransformers(spec: Any, flash: bool) -> nn.Module:
    """x-transformers' decoder LM at the spec's shape (the baseline's components, nothing extra)."""
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=spec.vocab_size, max_seq_len=spec.max_len, tie_embedding=True, scaled_sinu_pos_emb=True,
        attn_layers=Decoder(
            dim=spec.d_model, depth=spec.n_layers, heads=spec.n_heads, attn_dim_head=spec.head_dim,
            ff_mult=spec.d_ff / spec.d_model, ff_no_bias=True, ff_custom_activation=nn.ReLU(),
            attn_flash=flash,
        ),
    )


def compile_stacks(model: nn.Module) -> None:
    """torch.compile each Transformer stack in place (regional: embedding and head stay eager)."""
    for stack in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
        if stack is not None:
            stack.compile()


# -- one lockstep fit -----------------------------------------------------------------------------
@dataclasses.dataclass
class FitTimes:
    """Per-iteration seconds of each path and tokens per step."""

    harness: list[float]
    plain: dict[str, list[float]]
    tokens: list[int]


def plain_loops(cell: Any, task: Any, spec: Any, device: torch.device, clock: Clock, *, xtf: list[str],
                compile_model: bool, precision: str, log_every: int) -> list[PlainLoop]:
    """The plain loops of a lockstep fit: ours (``plain``), x-transformers' (``xtf`` names) in
    ``precision``, and ours in fp32 (``plain fp32``) when ``precision`` is bf16."""
    import lightning as L

    from modtransfer.core.model import build
    from modtransfer.run.cell import make_module

    def ours() -> nn.Module:
        L.seed_everything(cell.seed, workers=False, verbose=False)  # as run_cell: same initial weights
        return build(spec, task.topology)

    paths: list[tuple[str, nn.Module, Callable[[nn.Module, Batch], Tensor], str]] = [
        ("plain", ours(), cell_loss(task), precision)]
    for name in xtf:
        torch.manual_seed(cell.seed)
        paths.append((name, build_xtransformers(spec, flash=name.endswith("flash")), xtf_loss, precision))
    if precision == "bf16":
        paths.append(("plain fp32", ours(), cell_loss(task), "fp32"))
    loops = []
    for name, model, loss_fn, prec in paths:
        model.to(device)
        if compile_model and name.startswith("plain"):
            compile_stacks(model)
        elif compile_model:
            model.compile()
        # the cell's own configure_optimizers (AdamW groups, fused kernel where supported, LR schedule)
        config = make_module(model, task, cell, [], log_every, time.perf_counter()).to(device).configure_optimizers()
        loops.append(PlainLoop(name, model, loss_fn, config["optimizer"], config["lr_scheduler"]["scheduler"],
                               task.train_batches(cell.seed, cell.budget.batch_size), cell.budget.grad_clip, device,
                               clock, task.count_tokens, prec))
    return loops


def lockstep_fit(cell: Any, task: Any, device: torch.device, *, iterations: int, xtf: list[str],
                 compile_model: bool, clock: Clock, precision: str = "auto") -> FitTimes:
    """One Lightning fit of ``cell`` in ``precision`` with the plain loops run between its steps."""
    import lightning as L

    from modtransfer.core.model import build
    from modtransfer.run.cell import LOG_EVERY, make_datamodule, make_module, make_trainer

    resolved = resolve_precision(precision, device.type)
    budget = cell.budget.replace(steps=iterations)
    cell = dataclasses.replace(cell, budget=budget)
    spec = task.configure_spec(cell.spec)
    log_every = max(1, min(LOG_EVERY, budget.steps // 10 or 1))
    loops = plain_loops(cell, task, spec, device, clock, xtf=xtf, compile_model=compile_model, precision=resolved,
                        log_every=log_every)
    L.seed_everything(cell.seed, workers=False, verbose=False)
    model = build(spec, task.topology)
    if compile_model:
        compile_stacks(model)
    module = make_module(model, task, cell, [], log_every, time.perf_counter())
    starts: list[Any] = []
    inserted: list[tuple[Any, Any]] = []

    class Lockstep(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            starts.append(clock.mark())

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            begin = clock.mark()
            for loop in loops if len(starts) % 2 else loops[::-1]:
                loop.step()
            inserted.append((begin, clock.mark()))

    trainer = make_trainer(budget, device.type, None, log_every, callbacks=[Lockstep()], precision=resolved)
    trainer.fit(module, datamodule=make_datamodule(task, cell.seed, budget.batch_size))
    clock.synchronize()
    if module.status != "done":
        raise RuntimeError(f"the harness fit of {cell.variant} ended {module.status}: {module.reason}")
    n = len(starts) - 1  # the last harness step has no closing mark
    harness = [clock.seconds(starts[i], starts[i + 1]) - clock.seconds(*inserted[i]) for i in range(n)]
    return FitTimes(harness=harness, plain={loop.name: loop.seconds()[:n] for loop in loops},
                    tokens=loops[0].tokens[:n])


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
    from modtransfer.run.cell import _lightning, run_cell
    from modtransfer.run.envinfo import environment

    device = resolve_device(args.device)
    environment(device.type)  # the imports a first cell pays (Lightning, W&B versions) before the reading
    _lightning()
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


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


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
    from modtransfer.core.model import count_flops, count_params
    from modtransfer.core.task import TASKS
    from modtransfer.run.cell import run_cell

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
    xtf_version = xtransformers_version()
    xtf_paths: list[str] = []
    if task.topology == "decoder" and task.has_vocab:
        xtf_paths = ["x-tf", "x-tf flash"] if xtf_version else []
        if xtf_version:
            xtf_params = sum(p.numel() for p in build_xtransformers(task.configure_spec(cells["baseline"].spec),
                                                                    flash=True).parameters())
            xtf_note = f"x-transformers {xtf_version} ({xtf_params / 1e6:.2f}M params at the baseline's shape)"
        else:
            xtf_note = "x-transformers not installed (pip install x-transformers): its columns are skipped"
    else:
        xtf_note = f"x-transformers columns only for a decoder LM task, not {args.task!r}"

    clock = Clock(device)
    peak = machine_peak(device, args.precision, args.cache_dir, remeasure=args.remeasure_peak)
    seq = int(task.config.get("seq_len") or task.config.get("max_len") or cells["baseline"].spec.max_len)
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        spec = task.configure_spec(cells[v].spec)
        rows[v] = {"params": count_params(spec, task.topology), "flops_per_token": count_flops(spec, task.topology, seq),
                   "repeats": []}

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
                                                        args.steps, warm["startup_s"], peak["flops"]))
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
        "xtf_note": xtf_note, "cold_startup_s": cold["startup_s"],
        "ls_s": _median(ls_times), "ls_runs": ls_times, "rows": rows,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def summarise_fit(t: FitTimes, flops_per_token: float, warmup: int, steps: int, startup_s: float | None,
                  peak_flops: float) -> dict[str, Any]:
    """One fit's medians over its timed iterations (per-iteration ratios, so load drifts cancel)."""
    window = range(warmup, min(warmup + steps, len(t.harness)))
    if not window:
        raise RuntimeError("no timed iterations: increase --steps")
    tok = [t.tokens[i] for i in window]
    out: dict[str, Any] = {
        "harness_tok_s": statistics.median(tok[k] / t.harness[i] for k, i in enumerate(window)),
        "mfu": statistics.median(3 * flops_per_token * t.tokens[i] / t.harness[i] / peak_flops for i in window),
        "startup_s": startup_s,
    }
    for name, secs in t.plain.items():
        key = name.replace(" ", "_").replace("-", "")
        out[f"{key}_tok_s"] = statistics.median(tok[k] / secs[i] for k, i in enumerate(window))
    out["harness_over_plain"] = statistics.median(t.plain["plain"][i] / t.harness[i] for i in window)
    for name in ("x-tf", "x-tf flash"):
        if name in t.plain:
            key = name.replace(" ", "_").replace("-", "")
            out[f"ours_over_{key}"] = statistics.median(t.plain[name][i] / t.plain["plain"][i] for i in window)
    if "plain fp32" in t.plain:  # ours in bf16 against ours in fp32, same loop, same batches
        out["bf16_speedup"] = statistics.median(t.plain["plain fp32"][i] / t.plain["plain"][i] for i in window)
    return out


def aggregate(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of every per-fit number."""
    return {k: _median([rep.get(k) for rep in repeats]) for k in repeats[0]}


# -- the table ------------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


#: the table's columns: header and the cell text of a row
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("params", lambda r: f"{r['params'] / 1e6:.2f}M"),
    ("GFLOP/tok", lambda r: f"{3 * r['flops_per_token'] / 1e9:.4f}"),
    ("harness tok/s", lambda r: _fmt(r.get("harness_tok_s"), ".0f")),
    ("plain tok/s", lambda r: _fmt(r.get("plain_tok_s"), ".0f")),
    ("harness/plain", lambda r: _fmt(r.get("harness_over_plain"), ".3f")),
    ("x-tf tok/s", lambda r: _fmt(r.get("xtf_tok_s"), ".0f")),
    ("ours/x-tf", lambda r: _fmt(r.get("ours_over_xtf"), ".3f")),
    ("x-tf flash tok/s", lambda r: _fmt(r.get("xtf_flash_tok_s"), ".0f")),
    ("ours/x-tf flash", lambda r: _fmt(r.get("ours_over_xtf_flash"), ".3f")),
    ("bf16/fp32", lambda r: _fmt(r.get("bf16_speedup"), ".3f")),
    ("MFU", lambda r: _pct(r.get("mfu"))),
    ("peak MiB", lambda r: _fmt(r.get("peak_mib"), ".0f")),
    ("start-up s", lambda r: _fmt(r.get("startup_s"), ".3f")),
]


def format_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The one table (plus its header lines and the targets) that ``bench speed`` prints
    (``markdown``: the table as Markdown, as the README shows it)."""
    shape, peak = res["shape"], res["peak"]
    columns = [c for c in COLUMNS if c[0] != "bf16/fp32" or res["precision"] == "bf16"]
    header = ["variant", *(c[0] for c in columns)]
    body = [[name, *(fn(r) for _, fn in columns)] for name, r in res["rows"].items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        if markdown:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    sizes = ", ".join(f"{n}^3 {f / 1e9:.1f}" for n, f in peak["by_size"].items())
    methods = sorted({r.get("memory_method") for r in res["rows"].values() if r.get("memory_method")})
    out = [
        f"bench speed: task {res['task']}, size {res['size']} (d_model {shape['d_model']}, {shape['n_layers']} layers, "
        f"{shape['n_heads']} heads, d_ff {shape['d_ff']}, vocab {shape['vocab_size']}), batch {res['batch_size']} x "
        f"seq {res['seq_len']}; {res['device']} ({res['device_name']}), {res['threads']} threads, torch {res['torch']}, "
        f"precision {res['precision']}" + (", torch.compile" if res["compile"] else ""),
        f"{res['steps']} timed steps after {res['warmup']} warm-up, {res['repeats']} repeats; medians of per-iteration "
        "values over steps, then over repeats; paths interleaved step by step",
        f"matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak['dtype']} torch.mm, best of {peak['repeats']} repeats "
        f"at each size: {sizes} GFLOP/s; cached per machine); MFU = 3 x forward FLOPs/token x harness tok/s / peak",
        f"{res['xtf_note']}; ours/x-tf = our plain loop / x-transformers in the same loop and precision (baseline only; "
        "'flash' = attn_flash=True)" + ("; bf16/fp32 = our plain loop in bf16 / in fp32" if res["precision"] == "bf16" else ""),
        "",
        line(header), "|" + "---|" * len(header) if markdown else line(["-" * w for w in widths]),
        *(line(b) for b in body), "",
        f"peak MiB: one cell in a fresh process, {', '.join(methods) or 'not measured'}; start-up s: run_cell "
        f"startup_s in a warm process (cold first cell: {_fmt(res['cold_startup_s'], '.3f')} s)",
        f"`modtransfer ls variants` (accounting cache warm): {_fmt(res['ls_s'], '.3f')} s wall (median)"
        if res["ls_s"] is not None else "`modtransfer ls variants`: not timed (--no-ls)",
    ]
    out.append(targets_line(res))
    return "\n".join(out)


def targets_line(res: dict[str, Any]) -> str:
    """Each target against the baseline row (informative; nothing here fails)."""
    base = res["rows"].get("baseline", {})
    worst_ratio = _min([r.get("harness_over_plain") for r in res["rows"].values()])
    checks = [
        ("harness/plain (worst row)", worst_ratio, TARGETS["harness/plain"], ">=", ".3f"),
        ("ours/x-tf", base.get("ours_over_xtf"), TARGETS["ours/x-tf"], ">=", ".3f"),
        ("ours/x-tf flash", base.get("ours_over_xtf_flash"), TARGETS["ours/x-tf"], ">=", ".3f"),
        ("MFU (baseline)", base.get("mfu"), TARGETS["mfu"], ">=", ".3f"),
        ("ls variants s", res.get("ls_s"), TARGETS["ls_s"], "<", ".2f"),
        ("warm start-up s (worst row)", _max([r.get("startup_s") for r in res["rows"].values()]), TARGETS["startup_s"],
         "<", ".3f"),
    ]
    parts = []
    for label, value, target, op, spec in checks:
        if value is None:
            parts.append(f"{label} n/a")
            continue
        ok = value >= target if op == ">=" else value < target
        parts.append(f"{label} {format(value, spec)} {op} {target:g}: {'met' if ok else 'MISSED'}")
    return "targets: " + "; ".join(parts)


def _min(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return min(xs) if xs else None


def _max(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
