"""The training paths ``modtransfer bench speed`` times in lockstep: the cell's Lightning fit and, between
its steps, bare PyTorch loops of the same model (and of x-transformers' at the same shape).

x-transformers: Phil Wang's ``TransformerWrapper``/``Decoder`` (https://github.com/lucidrains/x-transformers),
with flash attention through PyTorch SDPA (Dao et al. 2022, "FlashAttention", arXiv 2205.14135).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.model import Transformer
from modtransfer.core.precision import autocast, resolve_precision

if TYPE_CHECKING:
    from modtransfer.core.spec import ModelSpec
    from modtransfer.core.task import Task
    from modtransfer.run.plan_types import Cell

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


def cell_loss(task: Task) -> Callable[[nn.Module, Batch], Tensor]:
    """The loss a cell's ``training_step`` optimises: the task loss plus the model's auxiliary loss."""

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        assert isinstance(model, Transformer), "a cell loss runs on a harness model"
        loss = task.loss(model, batch)
        aux = model.aux_loss()
        return loss + aux

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


def build_xtransformers(spec: ModelSpec, flash: bool) -> nn.Module:
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


def plain_loops(cell: Cell, task: Task, spec: ModelSpec, device: torch.device, clock: Clock, *, xtf: list[str],
                compile_model: bool, precision: str) -> list[PlainLoop]:
    """The plain loops of a lockstep fit: ours (``plain``), x-transformers' (``xtf`` names) in
    ``precision``, and ours in fp32 (``plain fp32``) when ``precision`` is bf16."""
    import lightning as L

    from modtransfer.core.model import build
    from modtransfer.run.training import recipe_with_schedule

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
        config = recipe_with_schedule(model, cell.spec.recipe, cell.budget, device)
        sched = config["lr_scheduler"]
        loops.append(PlainLoop(name, model, loss_fn, config["optimizer"], sched["scheduler"] if isinstance(sched, dict) else sched,
                               task.train_batches(cell.seed, cell.budget.batch_size), cell.budget.grad_clip, device,
                               clock, task.count_tokens, prec))
    return loops


def lockstep_fit(cell: Cell, task: Task, device: torch.device, *, iterations: int, xtf: list[str],
                 compile_model: bool, clock: Clock, precision: str = "auto") -> FitTimes:
    """One Lightning fit of ``cell`` in ``precision`` with the plain loops run between its steps."""
    import lightning as L

    from modtransfer.core.model import build
    from modtransfer.run.cell import LOG_EVERY
    from modtransfer.run.training import make_datamodule, make_module, make_trainer

    resolved = resolve_precision(precision, device.type)
    budget = cell.budget.replace(steps=iterations)
    cell = dataclasses.replace(cell, budget=budget)
    spec = task.configure_spec(cell.spec)
    log_every = max(1, min(LOG_EVERY, budget.steps // 10 or 1))
    loops = plain_loops(cell, task, spec, device, clock, xtf=xtf, compile_model=compile_model, precision=resolved)
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
