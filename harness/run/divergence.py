"""Divergence of a cell: a training loss that becomes NaN/inf, or stays above ``diverge_factor`` x its
step-0 value for ``diverge_patience`` steps in a row, watched on the device without a host sync per step.

The patience keeps a spike that training recovers from (Fixup or ReZero at a high learning rate
jump to 10-10^4 x the initial loss for a few steps, then train well) from counting as divergence;
a diverged cell is a failure, counted as a rate, never averaged into a mean.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from modtransfer.core.task import Budget, Task

#: steps in a row the loss must stay above ``diverge_factor`` x its initial value (at most)
DIVERGE_PATIENCE = 20


def diverge_factor_for(task: Task, budget: Budget) -> float:
    """The divergence factor a cell uses: its budget's, or the task's own default.

    A task may declare ``diverge_factor`` (a class attribute) when the harness default does
    not suit its loss; it applies only while the budget keeps the ``Budget`` default, so a
    plan that sets ``budget.diverge_factor`` explicitly always wins. 0 checks NaN/inf only.
    """
    from dataclasses import fields

    own = getattr(task, "diverge_factor", None)
    default = next(f.default for f in fields(type(budget)) if f.name == "diverge_factor")
    if own is not None and budget.diverge_factor == default:
        return float(own)
    return float(budget.diverge_factor)


def diverge_patience_for(task: Task, budget: Budget) -> int:
    """Steps in a row above the limit that make a cell diverged: the task's ``diverge_patience``
    if it declares one, else :data:`DIVERGE_PATIENCE` capped at a tenth of the budget's steps."""
    own = getattr(task, "diverge_patience", None)
    if own is not None:
        return max(1, int(own))
    return max(1, min(DIVERGE_PATIENCE, budget.steps // 10))


def divergence_limit(initial_loss: float, factor: float) -> float | None:
    """The loss above which a cell has diverged, or None when only NaN/inf count.

    ``factor`` x the step-0 loss, for a positive finite step-0 loss only: a multiple of a zero
    or negative loss (a log-likelihood, say) would flag every step as diverged.
    """
    if factor > 0 and math.isfinite(initial_loss) and initial_loss > 0:
        return factor * initial_loss
    return None


class DivergenceMonitor:
    """Watches the training loss on its device, with no host synchronisation per step.

    :meth:`update` takes each step's detached loss; :meth:`first_bad_step` (one sync, called
    every ``log_every`` steps) returns the first step of divergence or None: a NaN/inf loss,
    or the start of a run of ``patience`` steps in a row above ``limit`` (set once the step-0
    loss is known; None checks NaN/inf only).
    """

    def __init__(self, patience: int, device: torch.device | str = "cpu") -> None:
        self.patience = max(1, patience)
        self.limit: float | None = None
        self._run = torch.zeros((), dtype=torch.long, device=device)        # steps in a row above the limit
        self._run_start = torch.full((), -1, dtype=torch.long, device=device)
        self._bad = torch.full((), -1, dtype=torch.long, device=device)

    def to(self, device: torch.device | str) -> DivergenceMonitor:
        """Move the counters to the training device (the module's ``on_train_start``)."""
        self._run, self._run_start, self._bad = (t.to(device) for t in (self._run, self._run_start, self._bad))
        return self

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Account for the loss of optimiser step ``step`` (a few device ops, no sync)."""
        nonfinite = ~torch.isfinite(loss)
        bad_at = torch.full_like(self._bad, step)
        bad = nonfinite
        if self.limit is not None:
            over = (loss > self.limit) & ~nonfinite
            self._run = torch.where(over, self._run + 1, torch.zeros_like(self._run))
            self._run_start = torch.where(over & (self._run == 1), bad_at, self._run_start)
            bad = bad | (self._run >= self.patience)
            bad_at = torch.where(nonfinite, bad_at, self._run_start)
        self._bad = torch.where(bad & (self._bad < 0), bad_at, self._bad)

    def first_bad_step(self, final: bool = False) -> int | None:
        """The step where divergence began, or None so far (reads the device once).

        ``final``: training has ended, so a run above the limit shorter than the patience
        counts too (the loss blew up in the last steps and never came back).
        """
        bad = int(self._bad)
        if bad < 0 and final and int(self._run) > 0:
            bad = int(self._run_start)
        return bad if bad >= 0 else None
