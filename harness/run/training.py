"""The training of one cell under Lightning: :class:`CellModule` (the LightningModule), its data
module and its Trainer.

This module imports Lightning, so only a cell that trains imports it (``modtransfer ls`` and the
other light commands never do). The training step stays free of host synchronisation: the loss
curve, the divergence flag (:class:`~modtransfer.run.divergence.DivergenceMonitor`) and the first
bad step are accumulated on the device and read every ``log_every`` steps; evaluation calls the
task's ``evaluate`` on fixed held-out batches every ``eval_every`` steps and at the end.
Optimiser: the spec's training recipe (:mod:`modtransfer.core.recipe`, built by
:mod:`modtransfer.core.optim`); the baseline recipe is AdamW (Loshchilov & Hutter 2019, "Decoupled
Weight Decay Regularization", arXiv 1711.05101), weight decay on matrices only. An optimiser with a
train and an eval mode (schedule-free methods) is put in eval mode for every evaluation, so the
model is evaluated at the point the method prescribes (its average), and back in train mode after.
The recipe's auxiliary losses join the task's loss in each training step; the logged training loss
stays the task's own.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from modtransfer.core.optim import adamw, build_optimizer, owns_schedule, set_mode
from modtransfer.core.recipe import AUX_LOSSES, Recipe
from modtransfer.core.schedule import lr_lambda
from modtransfer.run.divergence import (
    DivergenceMonitor,
    diverge_factor_for,
    diverge_patience_for,
    divergence_limit,
)
from modtransfer.run.plan_types import Cell

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

    from modtransfer.core.model import Transformer
    from modtransfer.core.task import Budget, Task


def lightning_api() -> Any:
    """Lightning, with its start-up chatter silenced (called before each use: pytest resets warning filters)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    return L


def _with_schedule(opt: torch.optim.Optimizer, budget: Budget, constant: bool = False) -> OptimizerLRSchedulerConfig:
    """``opt`` with the budget's warm-up and schedule (or a constant multiplier) stepped every
    optimiser step, in Lightning's format."""
    fn = (lambda step: 1.0) if constant else lr_lambda(budget.schedule, budget.steps, budget.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def adamw_with_schedule(params: Any, budget: Budget, device: torch.device) -> OptimizerLRSchedulerConfig:
    """AdamW over ``params`` ((tensor, its dims in one model) pairs), weight decay on matrices only,
    with the budget's warm-up and schedule stepped every optimiser step (Lightning's format)."""
    return _with_schedule(adamw(params, budget, device), budget)


def recipe_with_schedule(model: torch.nn.Module, recipe: Recipe, budget: Budget,
                         device: torch.device) -> OptimizerLRSchedulerConfig:
    """The recipe's optimiser over ``model`` with the budget's schedule (none for an optimiser that
    schedules itself); the baseline recipe gives exactly :func:`adamw_with_schedule` over the model."""
    return _with_schedule(build_optimizer(model, recipe, budget, device), budget, constant=owns_schedule(recipe))


class CellModule(L.LightningModule):
    """One cell's model, loss and evaluation; ``status`` ends ``done``, ``diverged`` or ``timeout``."""

    def __init__(self, model: Transformer, task: Task, budget: Budget, val_batches: list[Any], log_every: int,
                 t_start: float, recipe: Recipe | None = None) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe or Recipe()
        # each auxiliary loss of the recipe: (weight, term(batch) -> scalar), attached to the model once
        self._aux_terms = [(w, AUX_LOSSES.get(name)(model)) for name, w in self.recipe.aux_losses]
        self._optimizer: Any = None
        self._task, self._budget, self._val, self.log_every, self._t_start = task, budget, val_batches, log_every, t_start
        self._factor = diverge_factor_for(task, budget)
        self._patience = diverge_patience_for(task, budget)
        self.curve: list[dict[str, Any]] = []
        self.status = "done"
        self.failed_step: int | None = None
        self.reason: str | None = None
        self.tokens = 0
        self.first_step_at: float | None = None
        self.initial_loss: float | None = None
        self._loss_sum = torch.zeros(())
        self._loss_n = 0
        self.divergence = DivergenceMonitor(self._patience)
        self.final_metrics: dict[str, float] = {}

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        config = recipe_with_schedule(self.model, self.recipe, self._budget, self.device)
        self._optimizer = config["optimizer"]
        return config

    def on_train_start(self) -> None:
        self._loss_sum = self._loss_sum.to(self.device)
        self.divergence.to(self.device)
        set_mode(self._optimizer, training=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        loss = self._task.loss(self.model, batch)
        aux = self.model.aux_loss()
        total = loss + aux
        for weight, term in self._aux_terms:
            total = total + weight * term(batch)
        det = loss.detach()
        self._loss_sum += det
        self._loss_n += 1
        self.tokens += self._task.count_tokens(batch)
        self.divergence.update(det, self.global_step)
        return total

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # the gradient norm, clipped here as Lightning's fp32 plugin does it: its bf16-mixed
        # plugin refuses to clip for fused optimizers (they unscale a GradScaler's gradients
        # inside step(), and cells use no GradScaler), which would fail every CUDA cell
        if gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        budget, step = self._budget, self.global_step  # optimiser steps taken so far
        if self.initial_loss is None:  # the loss of step 0 (the only one summed so far)
            self.initial_loss = float(self._loss_sum)
            self.divergence.limit = divergence_limit(self.initial_loss, self._factor)
        if step % self.log_every == 0 or step >= budget.steps:
            self.flush(step, final=step >= budget.steps)
        if self.status != "done":
            return
        if budget.max_seconds and time.perf_counter() - self._t_start > budget.max_seconds:
            self._stop("timeout", step, f"over the wall-clock budget of {budget.max_seconds:g} s")
            return
        if budget.eval_every and step % budget.eval_every == 0 and step < budget.steps:
            self.evaluate(step)

    def flush(self, step: int, final: bool = False) -> None:
        if self._loss_n:
            mean = float(self._loss_sum) / self._loss_n
            self.curve.append({"step": step, "train_loss": mean if math.isfinite(mean) else None})
            if self.logger is not None:
                self.logger.log_metrics({"train_loss": mean}, step=step)
            self._loss_sum.zero_()
            self._loss_n = 0
        bad = self.divergence.first_bad_step(final)
        if bad is not None and self.status == "done":
            self._stop("diverged", bad, "training loss became NaN/inf" if self.divergence.limit is None else
                       f"training loss NaN/inf, or above {self._factor:g} x its initial value "
                       f"({self.initial_loss:.4g} at step 0) for {self._patience} steps in a row")

    def _stop(self, status: str, step: int, reason: str) -> None:
        self.status, self.failed_step, self.reason = status, step, reason
        self.trainer.should_stop = True

    @torch.no_grad()
    def score(self, batches: list[Any]) -> dict[str, float]:
        """The task's metrics of the model on ``batches`` (eval mode; the curve is not touched)."""
        was = self.model.training
        self.model.eval()
        set_mode(self._optimizer, training=False)   # a schedule-free method's averaged point
        metrics = {k: float(v) for k, v in self._task.evaluate(self.model, [self._to_device(b) for b in batches]).items()}
        set_mode(self._optimizer, training=True)
        self.model.train(was)
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        metrics = self.score(self._val)
        if self.curve and self.curve[-1]["step"] == step:
            self.curve[-1].update(metrics)
        else:
            self.curve.append({"step": step, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)
        return metrics

    def _to_device(self, batch: Any) -> Any:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_module(model: Transformer, task: Task, cell: Cell, val_batches: list[Any], log_every: int,
                t_start: float) -> CellModule:
    """The LightningModule of a cell."""
    lightning_api()
    return CellModule(model, task, cell.budget, val_batches, log_every, t_start, recipe=cell.spec.recipe)


class _Stream(torch.utils.data.IterableDataset):
    """The task's training batches for one seed, as Lightning's data loader reads them."""

    def __init__(self, task: Task, seed: int, batch_size: int) -> None:
        self.task, self.seed, self.batch_size = task, seed, batch_size

    def __iter__(self):
        return iter(self.task.train_batches(self.seed, self.batch_size))


class TaskDataModule(L.LightningDataModule):
    """One cell's training data: the task's own batches, no worker processes."""

    def __init__(self, task: Task, seed: int, batch_size: int) -> None:
        super().__init__()
        self._stream = _Stream(task, seed, batch_size)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self._stream, batch_size=None, num_workers=0)


def make_datamodule(task: Task, seed: int, batch_size: int) -> TaskDataModule:
    lightning_api()
    return TaskDataModule(task, seed, batch_size)


def make_trainer(budget: Budget, accel: str, logger: Any, log_every: int, callbacks: list[Any] | None = None,
                 precision: str = "auto") -> L.Trainer:
    """The Lightning Trainer of a cell: ``budget.steps`` optimiser steps, no checkpoints, no sanity
    or Lightning validation (the cell evaluates itself), in the cell's ``precision``
    (:mod:`modtransfer.core.precision`: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere)."""
    from modtransfer.core.precision import lightning_precision, resolve_precision

    lightning_api()
    return L.Trainer(
        accelerator=accel, devices=1, max_steps=budget.steps, max_epochs=-1, logger=logger or False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=log_every,
        gradient_clip_val=budget.grad_clip or None, precision=lightning_precision(resolve_precision(precision, accel)),
        deterministic=False, use_distributed_sampler=False, callbacks=callbacks,
    )
