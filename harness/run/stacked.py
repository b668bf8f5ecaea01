"""K seeds of one cell trained as one stacked model: parameters with a leading member axis.

Every parameter and buffer of the K members' models (each built from its own seed, exactly as
a one-seed cell builds it) is stacked along a new first axis, and one training step runs the
task's own loss on each member's own batch under :func:`torch.func.vmap` over
:func:`torch.func.functional_call` (model ensembling by vectorisation, as in the functorch
documentation). What stays per member is exactly what a one-seed cell has: its initial weights, its data stream
(``task.train_batches(seed)``), its loss (the member's loss is its own, so its gradient is its
own), its gradient clipping (the norm over the member's parameters only), its AdamW state (the
optimiser is elementwise, so one AdamW over stacked tensors is K AdamWs), its divergence watch and
its stop, and its evaluation (the member's weights copied into one template model, then the
task's ``evaluate`` as for a one-seed cell). The learning-rate schedule is shared, as it is equal.

Dropout is not stacked (its masks come from the global generator in one-by-one order); cells
with dropout train alone (:mod:`modtransfer.run.stacking`), and so do cells whose training recipe is
not the baseline's (another optimiser, or an auxiliary loss: :mod:`modtransfer.core.recipe`). Diagnostics that hook the model's
modules (gradient norms per layer, attention entropy, ...) are not recorded for stacked members;
the events that the curves show (plateau, divergence) are.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import Tensor, nn

from modtransfer.run.divergence import (
    DivergenceMonitor,
    diverge_factor_for,
    diverge_patience_for,
    divergence_limit,
)
from modtransfer.run.training import adamw_with_schedule

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

    from modtransfer.core.model import Transformer
    from modtransfer.core.task import Budget, Task

Batch = dict[str, Any]


def _safe(name: str) -> str:
    return name.replace(".", "__")


def stack_batches(task: Task, batches: list[Batch]) -> Batch:
    """One batch with a leading member axis: each tensor key stacked, padded to the longest member
    along every axis with the task's ``stack_pad`` value for that key (non-tensor keys dropped)."""
    pads = getattr(task, "stack_pad", {}) or {}
    out: Batch = {}
    for key, first in batches[0].items():
        if not isinstance(first, Tensor):
            continue
        parts = [b[key] for b in batches]
        shape = [max(p.shape[d] for p in parts) for d in range(first.ndim)]
        if any(list(p.shape) != shape for p in parts):
            if key not in pads:
                raise ValueError(f"task {getattr(task, 'name', '?')!r}: members' {key!r} differ in shape and the task "
                                 "declares no stack_pad value for it")
            parts = [_pad_to(p, shape, pads[key]) for p in parts]
        out[key] = torch.stack(parts)
    return out


def _pad_to(t: Tensor, shape: list[int], value: Any) -> Tensor:
    if list(t.shape) == shape:
        return t
    full = torch.full(shape, value, dtype=t.dtype, device=t.device)
    full[tuple(slice(0, n) for n in t.shape)] = t
    return full


class _LossOf(nn.Module):
    """The task's training loss (plus the model's auxiliary losses) as a module's forward, so that
    :func:`torch.func.functional_call` can run it with one member's parameters."""

    def __init__(self, model: Transformer, task: Task) -> None:
        super().__init__()
        self.m = model
        self._task = task

    def forward(self, batch: Batch) -> Tensor:
        return self._task.loss(self.m, batch) + self.m.aux_loss()


class StackedState(nn.Module):
    """The members' parameters and buffers, stacked on a leading axis, under safe attribute names."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        first = models[0]
        self.param_names = [n for n, _ in first.named_parameters()]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        self.members = len(models)
        self.params = nn.ParameterDict()
        per_model = [dict(m.named_parameters()) for m in models]
        for name in self.param_names:
            member = [params[name] for params in per_model]
            self.params[_safe(name)] = nn.Parameter(torch.stack([p.detach() for p in member]),
                                                    requires_grad=member[0].requires_grad)
        for name in self.buffer_names:
            self.register_buffer("b__" + _safe(name), torch.stack([dict(m.named_buffers())[name] for m in models]))

    def as_dicts(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params = {"m." + n: self.params[_safe(n)] for n in self.param_names}
        buffers = {"m." + n: getattr(self, "b__" + _safe(n)) for n in self.buffer_names}
        return params, buffers

    @torch.no_grad()
    def load_member(self, model: nn.Module, k: int) -> None:
        """Copy member ``k``'s weights into ``model`` (a template of the same structure)."""
        for name, p in model.named_parameters():
            p.copy_(self.params[_safe(name)][k])
        for name, b in model.named_buffers():
            b.copy_(getattr(self, "b__" + _safe(name))[k])


class Member:
    """What one member accumulates while the group trains: its curve, status, stop step and evaluation."""

    def __init__(self, val_batches: list[Batch]) -> None:
        self.val = val_batches
        self.curve: list[dict[str, Any]] = []
        self.status = "done"
        self.failed_step: int | None = None
        self.reason: str | None = None
        self.stopped_at: int | None = None
        self.tokens = 0
        self.initial_loss: float | None = None
        self.final_metrics: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.stopped_at is None


class StackedCellModule(L.LightningModule):
    """K members of one cell: stacked parameters, a vmapped loss, per-member clipping and stops."""

    def __init__(self, template: Transformer, models: list[Transformer], task: Task, budget: Budget,
                 val_batches: list[list[Batch]], log_every: int) -> None:
        super().__init__()
        self.model = template
        self.state = StackedState(models)
        self._task, self._budget, self.log_every = task, budget, log_every
        self._loss = _LossOf(template, task)
        self._factor = diverge_factor_for(task, budget)
        self._patience = diverge_patience_for(task, budget)
        self.k = len(models)
        self.members = [Member(v) for v in val_batches]
        self.divergence = [DivergenceMonitor(self._patience) for _ in models]
        self._loss_sum = torch.zeros(self.k)
        self._loss_n = 0
        self.first_step_at: float | None = None
        # scaled_dot_product_attention has no batching rule on a CPU: vmap loops over the members
        # there, which is still right (and measured by ``bench seeds``); the warning says only that
        warnings.filterwarnings("ignore", message=".*batching rule.*scaled_dot_product.*")
        self._vloss = torch.func.vmap(self._member_loss, in_dims=(0, 0, 0), randomness="error")

    def _member_loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Batch) -> Tensor:
        return torch.func.functional_call(self._loss, (params, buffers), (batch,))

    def member_losses(self, batch: Batch) -> Tensor:
        """The K members' training losses on a stacked batch (one vmapped call)."""
        params, buffers = self.state.as_dicts()
        return self._vloss(params, buffers, batch)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        # a member's tensor has one axis less than the stacked one
        params = ((p, p.ndim - 1) for p in self.state.params.values() if p.requires_grad)
        return adamw_with_schedule(params, self._budget, self.device)

    def on_train_start(self) -> None:
        self._loss_sum = self._loss_sum.to(self.device)
        for d in self.divergence:
            d.to(self.device)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        members = batch["members"]
        losses = self.member_losses(stack_batches(self._task, members))
        det = losses.detach()
        self._loss_sum += det
        self._loss_n += 1
        for k, m in enumerate(self.members):
            m.tokens += self._task.count_tokens(members[k]) if m.active else 0
            self.divergence[k].update(det[k], self.global_step)
        return losses.sum()

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Each member's gradient clipped to norm ``gradient_clip_val`` over its own parameters
        (as ``torch.nn.utils.clip_grad_norm_`` clips a one-seed cell's: coefficient
        ``max_norm / (norm + 1e-6)``, at most 1)."""
        if not gradient_clip_val:
            return
        grads = [p.grad for p in self.state.params.values() if p.grad is not None]
        if not grads:
            return
        # a member's scalar parameter (ReZero's alpha) is a 1-D stacked tensor: one value per member
        sq = torch.stack([g.detach().reshape(g.shape[0], -1).float().pow(2).sum(1) for g in grads]).sum(0)
        coef = (gradient_clip_val / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype).view(-1, *([1] * (g.ndim - 1))))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if self.members[0].initial_loss is None:
            for k, m in enumerate(self.members):
                m.initial_loss = float(self._loss_sum[k])
                self.divergence[k].limit = divergence_limit(m.initial_loss, self._factor)
        if step % self.log_every == 0 or step >= self._budget.steps:
            self.flush(step, final=step >= self._budget.steps)
        if not any(m.active for m in self.members):
            self.trainer.should_stop = True
            return
        every = self._budget.eval_every
        if every and step % every == 0 and step < self._budget.steps:
            for k, m in enumerate(self.members):
                if m.active:
                    self.evaluate(k, step)

    def flush(self, step: int, final: bool = False) -> None:
        """The mean training loss since the last flush, per active member; members that diverged stop."""
        if self._loss_n:
            means = (self._loss_sum / self._loss_n).tolist()
            for m, mean in zip(self.members, means, strict=True):
                if m.active:
                    m.curve.append({"step": step, "train_loss": mean if math.isfinite(mean) else None})
            self._loss_sum.zero_()
            self._loss_n = 0
        for k, m in enumerate(self.members):
            bad = self.divergence[k].first_bad_step(final) if m.active else None
            if bad is not None:
                m.status, m.failed_step, m.stopped_at = "diverged", bad, step
                m.reason = ("training loss became NaN/inf" if self.divergence[k].limit is None else
                            f"training loss NaN/inf, or above {self._factor:g} x its initial value "
                            f"({m.initial_loss:.4g} at step 0) for {self._patience} steps in a row")

    @torch.no_grad()
    def score(self, k: int, batches: list[Batch]) -> dict[str, float]:
        """Member ``k``'s metrics on ``batches`` (its weights in the template, eval mode; no curve entry)."""
        model = self.model
        self.state.load_member(model, k)
        was = model.training
        model.eval()
        moved = [{n: v.to(self.device) if isinstance(v, Tensor) else v for n, v in b.items()} for b in batches]
        metrics = {n: float(v) for n, v in self._task.evaluate(model, moved).items()}
        model.train(was)
        return metrics

    def evaluate(self, k: int, step: int) -> dict[str, float]:
        """Member ``k``'s metrics on its held-out batches, recorded on its curve."""
        member = self.members[k]
        metrics = self.score(k, member.val)
        if member.curve and member.curve[-1]["step"] == step:
            member.curve[-1].update(metrics)
        else:
            member.curve.append({"step": step, **metrics})
        return metrics


class _StackedStream(torch.utils.data.IterableDataset):
    """The members' training batches, step by step: each member's own seed's stream."""

    def __init__(self, task: Task, seeds: list[int], batch_size: int) -> None:
        self.task, self.seeds, self.batch_size = task, seeds, batch_size

    def __iter__(self):
        streams = [iter(self.task.train_batches(s, self.batch_size)) for s in self.seeds]
        while True:
            yield {"members": [next(s) for s in streams]}


class StackedDataModule(L.LightningDataModule):
    def __init__(self, task: Task, seeds: list[int], batch_size: int) -> None:
        super().__init__()
        self._stream = _StackedStream(task, seeds, batch_size)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self._stream, batch_size=None, num_workers=0)


def probe(module: StackedCellModule, task: Task, seeds: list[int], batch_size: int) -> str | None:
    """One stacked forward and backward on each member's first batch (fresh streams, so the
    members' data is untouched); the error in one line when the model cannot run stacked.

    Components that count their training steps (``steps_seen``: ``sliding_window``'s window warm-up)
    are rewound afterwards, so the probe is not a step of the members' schedule.
    """
    counters = {m: m.steps_seen for m in module.model.modules() if isinstance(getattr(m, "steps_seen", None), int)}
    try:
        batches = [next(iter(task.train_batches(s, batch_size))) for s in seeds]
        loss = module.member_losses(stack_batches(task, batches)).sum()
        loss.backward()
    except Exception as exc:  # any component that vmap cannot batch
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"[:300]
    finally:
        for p in module.state.params.values():
            p.grad = None
        for m, seen in counters.items():
            m.steps_seen = seen
    return None
