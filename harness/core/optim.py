"""The optimiser of a training recipe (:mod:`modtransfer.core.recipe`), built over a model's parameters.

The baseline is AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization",
arXiv 1711.05101) with the budget's learning rate, betas and weight decay on matrices only
(:func:`adamw`). A recipe names another optimiser and the parameters it trains (``scope``); the
parameters outside its scope train with that same baseline AdamW, and the two run as one
:class:`Chained` optimiser, so that one learning-rate schedule, one gradient clip and one
``step()`` cover both (what Lightning's automatic optimisation expects).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modtransfer.core.recipe import OPTIMIZERS, Recipe

if TYPE_CHECKING:
    from modtransfer.core.task import Budget


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether AdamW has a fused kernel here: CUDA, and CPU from torch 2.4 (one pass over each
    parameter instead of about eight elementwise passes; the same update up to float rounding)."""
    if device.type == "cuda":
        return True
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def decay_groups(params: Iterable[tuple[torch.Tensor, int]], weight_decay: float) -> list[dict[str, Any]]:
    """``(tensor, its dims in one model)`` pairs as parameter groups: ``weight_decay`` on matrices, none on
    vectors and scalars (empty groups left out)."""
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for p, ndim in params:
        (decay if ndim >= 2 and weight_decay > 0 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw(params: Iterable[tuple[torch.Tensor, int]], budget: Budget, device: torch.device) -> torch.optim.AdamW:
    """The baseline's AdamW over ``(tensor, its dims in one model)`` pairs."""
    return adamw_on_groups(decay_groups(params, budget.weight_decay), budget, device)


def adamw_on_groups(groups: list[dict[str, Any]], budget: Budget, device: torch.device) -> torch.optim.AdamW:
    """AdamW over parameter groups, with the budget's learning rate and betas (fused where supported)."""
    return torch.optim.AdamW(groups, lr=budget.lr, betas=budget.betas,
                             fused=True if fused_adamw_supported(device) else None)


def closure_loss(closure: Any) -> Any:
    """The loss of an optimiser step's ``closure`` (evaluated with gradients on), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Chained(torch.optim.Optimizer):
    """Several optimisers over disjoint parameters, as one: its ``param_groups`` are theirs (the same
    dicts, so a learning-rate scheduler that scales them scales each optimiser's), and ``step`` runs
    the closure once, then steps each of them."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        super().__init__([g for opt in optimizers for g in opt.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure_loss(closure)
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:
        """Train mode of the optimisers that keep one (schedule-free methods)."""
        for opt in self.optimizers:
            train = getattr(opt, "train", None)
            if callable(train):
                train()

    def eval(self) -> None:
        for opt in self.optimizers:
            evaluate = getattr(opt, "eval", None)
            if callable(evaluate):
                evaluate()


def hidden_parameters(model: nn.Module) -> set[int]:
    """Ids of the hidden matrices: weights of the linear maps inside the model's Transformer stacks
    (``encoder`` / ``decoder``), not embeddings, heads, input/output projections, position tables,
    gains or biases."""
    out: set[int] = set()
    for stack_name in ("encoder", "decoder"):
        stack = getattr(model, stack_name, None)
        if not isinstance(stack, nn.Module):
            continue
        for module in stack.modules():
            if isinstance(module, nn.Linear) and module.weight.ndim == 2 and module.weight.requires_grad:
                out.add(id(module.weight))
    return out


def split_scope(model: nn.Module, scope: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters in ``scope`` and the rest, each in the model's order (tied ones once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if scope == "all":
        return params, []
    hidden = hidden_parameters(model)
    return [p for p in params if id(p) in hidden], [p for p in params if id(p) not in hidden]


def build_optimizer(model: nn.Module, recipe: Recipe, budget: Budget, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``: the baseline AdamW for the baseline recipe (exactly as
    before recipes existed), else the recipe's optimiser on its scope, chained with AdamW on the rest."""
    if recipe.optimizer == "adamw" and not recipe.options:
        return adamw(((p, p.ndim) for p in model.parameters() if p.requires_grad), budget, device)
    entry = OPTIMIZERS.entry(recipe.optimizer)
    inside, rest = split_scope(model, recipe.scope)
    options = {**entry.meta.get("options", {}), **dict(recipe.options)}
    main = entry.obj(decay_groups(((p, p.ndim) for p in inside), budget.weight_decay), budget, options, device)
    if not rest:
        return main
    return Chained([main, adamw(((p, p.ndim) for p in rest), budget, device)])


def owns_schedule(recipe: Recipe) -> bool:
    """Whether the recipe's optimiser warms up and anneals by itself (the budget's schedule left off)."""
    return recipe.optimizer != "adamw" and bool(OPTIMIZERS.entry(recipe.optimizer).meta.get("own_schedule"))


def set_mode(optimizer: Any, training: bool) -> None:
    """Train or eval mode of an optimiser that keeps one (schedule-free methods evaluate at their
    averaged point: ``eval()`` moves the parameters there, ``train()`` back); a no-op for the rest."""
    method = getattr(optimizer, "train" if training else "eval", None)
    if callable(method):
        method()
