"""Initialisation schemes, applied once after the model is built.

default: PyTorch's own per-module initialisation (Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)))
and N(0, 1/d) embeddings.
xavier_uniform / xavier_normal (Glorot & Bengio 2010): Var(W) = gain^2 2 / (fan_in + fan_out).
kaiming_uniform / kaiming_normal (He et al. 2015, arXiv 1502.01852): Var(W) = 2 / fan_in (ReLU gain).
normal(std): N(0, std^2), default std 0.02 (GPT-2, BERT). uniform(a): U(-a, a), default a 0.05.
The scale (gain, std or a) is ``spec.init_scale``; 0 means the scheme's default.

What a scheme touches: the weight of every ``nn.Linear`` (biases set to 0), with the fused
attention projections treated as their separate Q, K, V matrices (their ``branch_weights()``).
Token embeddings, position tables, relative-bias tables and norm gains keep their own init,
because the embedding component ties its scale to the sqrt(d) input multiplier and the tied
output layer.

Special inits: a module with its own initialisation (Fixup, ReZero alpha, DeepNorm beta, the
unscaled-attention W_q) defines ``reset_special(topology, stack)``; every scheme ends with
:func:`apply_special_inits`, so those inits win over the scheme. ``reset_special`` re-applies
the init from scratch, so a second call is harmless. A plugin init scheme should end with
``apply_special_inits(model)`` too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.errors import UserError
from modtransfer.spec import ModelSpec
from modtransfer.variant import register_variant

WeightInit = Callable[[Tensor], object]


def apply_special_inits(model: nn.Module) -> None:
    """Call ``reset_special(topology, stack)`` on every module that has one (each module once)."""
    topology = getattr(model, "topology", "")
    seen: set[int] = set()
    stacks = [(name, getattr(model, name, None)) for name in ("encoder", "decoder")]
    stacks.append(("", model))
    for stack, root in stacks:
        if not isinstance(root, nn.Module):
            continue
        for m in root.modules():
            hook = getattr(m, "reset_special", None)
            if callable(hook) and id(m) not in seen:
                seen.add(id(m))
                hook(topology, stack)


@torch.no_grad()
def init_linear_weights(model: nn.Module, init: WeightInit) -> None:
    """Apply ``init`` in place to every Linear weight (fused projections part by part); zero biases."""
    done: set[int] = set()
    for m in model.modules():
        parts = getattr(m, "branch_weights", None)
        if callable(parts) and not isinstance(m, nn.Linear):   # covers all its own Linear layers
            for views in parts().values():
                for w in views:
                    init(w)
            done.update(id(c) for c in m.children() if isinstance(c, nn.Linear))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if id(m) not in done:
                init(m.weight)
            if m.bias is not None:
                m.bias.zero_()


def _scheme(name: str, make: Callable[[float], WeightInit], paper: str, what: str) -> None:
    def scheme(model: nn.Module, spec: ModelSpec) -> None:
        init_linear_weights(model, make(spec.init_scale))
        apply_special_inits(model)

    scheme.__name__ = scheme.__qualname__ = f"init_{name}"
    scheme.__doc__ = f"{what} on every Linear weight, then the modules' special inits."
    register_component("init", name, paper=paper)(scheme)


@register_component("init", "default")
def init_default(model: nn.Module, spec: ModelSpec) -> None:
    """Keep each module's own initialisation (special inits re-applied with the model's topology)."""
    apply_special_inits(model)


_GLOROT = "Glorot & Bengio 2010, AISTATS"
_HE = "He et al. 2015, arXiv 1502.01852"
_scheme("xavier_uniform", lambda s: lambda w: nn.init.xavier_uniform_(w, gain=s or 1.0), _GLOROT,
        "Xavier/Glorot uniform U(-a, a), a = gain sqrt(6 / (fan_in + fan_out))")
_scheme("xavier_normal", lambda s: lambda w: nn.init.xavier_normal_(w, gain=s or 1.0), _GLOROT,
        "Xavier/Glorot normal, std = gain sqrt(2 / (fan_in + fan_out))")
_scheme("kaiming_uniform", lambda s: lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"), _HE,
        "Kaiming/He uniform U(-a, a), a = sqrt(6 / fan_in)")
_scheme("kaiming_normal", lambda s: lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), _HE,
        "Kaiming/He normal, std = sqrt(2 / fan_in)")
_scheme("normal", lambda s: lambda w: nn.init.normal_(w, 0.0, s or 0.02), "Radford et al. 2019 (GPT-2)",
        "N(0, std^2)")
_scheme("uniform", lambda s: lambda w: nn.init.uniform_(w, -(s or 0.05), s or 0.05), "",
        "U(-a, a)")


# -- variants --------------------------------------------------------------------------
def _positive(variant: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UserError(f"variant {variant}: {key} must be a positive number, got {value!r}")
    return float(value)


@register_variant("init_xavier_uniform", slot="init", paper=_GLOROT)
def init_xavier_uniform(spec: ModelSpec, gain: float = 1.0) -> ModelSpec:
    """Xavier/Glorot uniform init of every Linear weight (gain a parameter, default 1)."""
    return spec.replace(init="xavier_uniform", init_scale=_positive("init_xavier_uniform", "gain", gain))


@register_variant("init_xavier_normal", slot="init", paper=_GLOROT)
def init_xavier_normal(spec: ModelSpec, gain: float = 1.0) -> ModelSpec:
    """Xavier/Glorot normal init of every Linear weight (gain a parameter, default 1)."""
    return spec.replace(init="xavier_normal", init_scale=_positive("init_xavier_normal", "gain", gain))


@register_variant("init_kaiming_uniform", slot="init", paper=_HE)
def init_kaiming_uniform(spec: ModelSpec) -> ModelSpec:
    """Kaiming/He uniform init (fan_in, ReLU gain) of every Linear weight."""
    return spec.replace(init="kaiming_uniform")


@register_variant("init_kaiming_normal", slot="init", paper=_HE)
def init_kaiming_normal(spec: ModelSpec) -> ModelSpec:
    """Kaiming/He normal init (fan_in, ReLU gain) of every Linear weight."""
    return spec.replace(init="kaiming_normal")


@register_variant("init_normal", slot="init", paper="Radford et al. 2019 (GPT-2)")
def init_normal(spec: ModelSpec, std: float = 0.02) -> ModelSpec:
    """N(0, std^2) init of every Linear weight (std a parameter, default 0.02)."""
    return spec.replace(init="normal", init_scale=_positive("init_normal", "std", std))


@register_variant("init_uniform", slot="init")
def init_uniform(spec: ModelSpec, a: float = 0.05) -> ModelSpec:
    """U(-a, a) init of every Linear weight (a a parameter, default 0.05)."""
    return spec.replace(init="uniform", init_scale=_positive("init_uniform", "a", a))
