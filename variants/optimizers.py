"""The optimiser as a modification: recipe variants (:mod:`modtransfer.core.recipe`), slot ``optimizer``.

Each variant patches the spec's training recipe only; the model is the baseline's. The learning
rate, betas and weight decay come from the task's budget (each optimiser's options scale or replace
them, documented per optimiser), and so does the schedule, except for schedule-free AdamW.

- ``muon``: Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks";
  scaled as Liu et al. 2025, "Muon is Scalable for LLM Training", arXiv 2502.16982) on the hidden
  matrices, the baseline AdamW on the rest; ``torch.optim.Muon``.
- ``adafactor``: Adafactor (Shazeer & Stern 2018, arXiv 1804.04235), factored second moments;
  ``torch.optim.Adafactor``.
- ``lion``: Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
  arXiv 2302.06675), the sign of an interpolated momentum; :class:`Lion` below.
- ``schedule_free_adamw``: schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled",
  arXiv 2405.15682) from the authors' ``schedulefree`` package (the optional extra
  ``modtransfer[schedulefree]``): no learning-rate schedule, evaluated at its averaged point.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from modtransfer.core.errors import UserError
from modtransfer.core.optim import adamw_on_groups, closure_loss
from modtransfer.core.recipe import register_optimizer
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant

ADAMW_PAPER = "Loshchilov & Hutter 2019, arXiv 1711.05101"
MUON_PAPER = "Jordan et al. 2024 (Muon, kellerjordan.github.io/posts/muon); Liu et al. 2025, arXiv 2502.16982"
ADAFACTOR_PAPER = "Shazeer & Stern 2018, arXiv 1804.04235"
LION_PAPER = "Chen et al. 2023, arXiv 2302.06675"
SCHEDULE_FREE_PAPER = "Defazio et al. 2024, arXiv 2405.15682"


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, arXiv 2302.06675, Algorithm 2): ``c = b1 m + (1 - b1) g``; the
    parameter moves by ``-lr sign(c)`` after decoupled weight decay ``p <- p (1 - lr wd)``; then
    ``m <- b2 m + (1 - b2) g``. Every coordinate of the update has magnitude ``lr`` (or 0)."""

    def __init__(self, params: Any, lr: float = 1.0e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas) or weight_decay < 0:
            raise ValueError(f"Lion: lr > 0, betas in [0, 1) and weight_decay >= 0, got {lr}, {betas}, {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                direction = m.mul(b1).add_(p.grad, alpha=1.0 - b1).sign_()
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(direction, alpha=-lr)
                m.mul_(b2).add_(p.grad, alpha=1.0 - b2)
        return loss


def _in_torch(name: str, since: str) -> Any:
    """``unavailable`` of an optimiser that ``torch.optim`` provides (present from torch ``since``)."""
    def why() -> str | None:
        if hasattr(torch.optim, name):
            return None
        return f"torch {torch.__version__} has no torch.optim.{name} (upgrade torch to {since} or later)"
    return why


# -- the optimisers a recipe can name -----------------------------------------------------------
@register_optimizer("adamw", paper=ADAMW_PAPER, scopes=("all", "hidden"))
def _adamw(groups: list[dict[str, Any]], budget: Any, options: dict[str, Any], device: torch.device) -> Any:
    """The baseline: AdamW with the budget's learning rate, betas and weight decay."""
    return adamw_on_groups(groups, budget, device)


@register_optimizer("muon", paper=MUON_PAPER, scopes=("hidden",), unavailable=_in_torch("Muon", "2.9"),
                    options={"lr_scale": 1.0, "momentum": 0.95, "nesterov": True, "ns_steps": 5,
                             "adjust_lr": "match_rms_adamw"})
def _muon(groups: list[dict[str, Any]], budget: Any, options: dict[str, Any], device: torch.device) -> Any:
    """Muon on 2-D matrices: the momentum's orthogonalisation (Newton-Schulz), scaled to AdamW's
    update RMS by default (``adjust_lr: match_rms_adamw``, so the budget's learning rate and weight
    decay carry over, Liu et al. 2025) or by ``max(1, rows/cols)^0.5`` (``adjust_lr: original``)."""
    adjust = options["adjust_lr"]
    if adjust not in ("match_rms_adamw", "original"):
        raise UserError(f"optimizer muon: adjust_lr must be match_rms_adamw or original, got {adjust!r}")
    return torch.optim.Muon(groups, lr=budget.lr * options["lr_scale"], momentum=options["momentum"],
                            nesterov=bool(options["nesterov"]), ns_steps=int(options["ns_steps"]),
                            adjust_lr_fn=None if adjust == "original" else adjust)


@register_optimizer("adafactor", paper=ADAFACTOR_PAPER, scopes=("all", "hidden"), unavailable=_in_torch("Adafactor", "2.5"),
                    options={"lr": 1.0e-2, "beta2_decay": -0.8, "d": 1.0})
def _adafactor(groups: list[dict[str, Any]], budget: Any, options: dict[str, Any], device: torch.device) -> Any:
    """Adafactor: the second moment of a matrix kept as row and column means (memory rows + cols),
    the step relative to the parameter's RMS and capped by ``lr`` (torch's default, not the
    budget's: Adafactor's step is relative), update clipping at ``d``."""
    return torch.optim.Adafactor(groups, lr=options["lr"], beta2_decay=options["beta2_decay"], d=options["d"])


@register_optimizer("lion", paper=LION_PAPER, scopes=("all", "hidden"),
                    options={"lr_scale": 0.3, "betas": (0.9, 0.99)})
def _lion(groups: list[dict[str, Any]], budget: Any, options: dict[str, Any], device: torch.device) -> Any:
    """Lion at ``lr_scale`` x the budget's learning rate and the budget's weight decay / ``lr_scale``
    (the paper's advice: a smaller step, a proportionally larger decay, the same lr x wd)."""
    scale = float(options["lr_scale"])
    if scale <= 0:
        raise UserError(f"optimizer lion: lr_scale must be > 0, got {scale}")
    for g in groups:
        g["weight_decay"] = g["weight_decay"] / scale
    return Lion(groups, lr=budget.lr * scale, betas=tuple(options["betas"]))


@register_optimizer("schedule_free_adamw", paper=SCHEDULE_FREE_PAPER, scopes=("all",), own_schedule=True,
                    extra="schedulefree", options={"lr_scale": 1.0, "r": 0.0, "weight_lr_power": 2.0})
def _schedule_free_adamw(groups: list[dict[str, Any]], budget: Any, options: dict[str, Any],
                         device: torch.device) -> Any:
    """``schedulefree.AdamWScheduleFree`` with the budget's learning rate (x ``lr_scale``), betas,
    weight decay and warm-up fraction (its own linear warm-up; no decay schedule)."""
    if importlib.util.find_spec("schedulefree") is None:
        raise UserError("optimizer schedule_free_adamw needs the schedulefree package; "
                        "install it with pip install 'modtransfer[schedulefree]'")
    import schedulefree

    warmup = max(1, round(budget.steps * budget.warmup)) if budget.warmup > 0 else 0
    return schedulefree.AdamWScheduleFree(groups, lr=budget.lr * options["lr_scale"], betas=budget.betas,
                                          warmup_steps=warmup, r=options["r"],
                                          weight_lr_power=options["weight_lr_power"])


# -- the variants ------------------------------------------------------------------------------
def _optimizer(spec: ModelSpec, name: str, scope: str = "all", **options: Any) -> ModelSpec:
    return spec.replace(recipe=spec.recipe.replace(optimizer=name, scope=scope, options=options))


@register_variant("muon", slot="optimizer", paper=MUON_PAPER)
def muon(spec: ModelSpec, **options: Any) -> ModelSpec:
    """Muon on the hidden matrices (orthogonalised momentum), AdamW on embeddings, heads and vectors."""
    return _optimizer(spec, "muon", scope="hidden", **options)


@register_variant("adafactor", slot="optimizer", paper=ADAFACTOR_PAPER)
def adafactor(spec: ModelSpec, **options: Any) -> ModelSpec:
    """Adafactor: factored second moments, relative step size, update clipping."""
    return _optimizer(spec, "adafactor", **options)


@register_variant("lion", slot="optimizer", paper=LION_PAPER)
def lion(spec: ModelSpec, **options: Any) -> ModelSpec:
    """Lion: the sign of an interpolated momentum (0.3 x the lr, weight decay / 0.3)."""
    return _optimizer(spec, "lion", **options)


@register_variant("schedule_free_adamw", slot="optimizer", paper=SCHEDULE_FREE_PAPER)
def schedule_free_adamw(spec: ModelSpec, **options: Any) -> ModelSpec:
    """Schedule-free AdamW (schedulefree package): iterate averaging instead of a decay schedule."""
    return _optimizer(spec, "schedule_free_adamw", **options)
