"""Depth at constant parameters (Narang et al. 2021, Table 1, "depth" rows).

Narang et al. trade layers against FFN width and heads at a fixed head size, keeping
L * d_ff and L * H constant: from 12 layers, d_ff 3072, H 12 to 24 layers d_ff 1536 H 6,
18 layers d_ff 2048 H 8, 8 layers d_ff 4608 H 18 and 6 layers d_ff 6144 H 24.

Here the same trade is computed from the incoming spec, so it stays matched at every size:
L' = round(f L), H' = round(H L / L') heads of the baseline's head size (``d_head`` is set
when d_model / H' differs from it), and d_ff' solved so that the non-embedding parameters
(one stack's blocks, norms and position parameters, counted by building the stacks on the
``meta`` device) match the baseline's. Because H' is rounded, the attention parameters can
differ a little, and by a different amount in a lone stack (decoder, encoder) than in an
encoder-decoder, whose decoder also has cross-attention; d_ff' is the width that minimises
the larger of the two relative mismatches (a multiple of 8 when that costs under 0.1%).
"""

from __future__ import annotations

import functools

import torch

from modtransfer.core.components import component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant

#: the stack sets whose parameters must match: a lone stack and an encoder + decoder-with-cross
#: (the layout's name is the topology the stacks are built for)
_LAYOUTS: dict[str, tuple[tuple[str, bool], ...]] = {
    "lone": (("decoder", False),),
    "encoder_decoder": (("encoder", False), ("decoder", True)),
}


def stack_params(spec: ModelSpec, stack: str, cross: bool, topology: str = "") -> int:
    """Parameters of one stack (blocks, position, final norm; no embedding), built on ``meta``.

    ``topology``: the model's (whether a stack ends with a norm may depend on it, see
    ``ModelSpec.final_norm``); ``""``: an encoder-decoder if ``cross``, else a lone stack.
    """
    try:
        return _cached_stack_params(spec, stack, cross, topology)
    except TypeError:  # a plugin option in ``extra`` that cannot be hashed
        return _stack_params(spec, stack, cross, topology)


@functools.lru_cache(maxsize=512)
def _cached_stack_params(spec: ModelSpec, stack: str, cross: bool, topology: str) -> int:
    return _stack_params(spec, stack, cross, topology)


def _stack_params(spec: ModelSpec, stack: str, cross: bool, topology: str) -> int:
    from modtransfer.core.model import Stack

    shared = component("sharing", spec.sharing)(stack)
    with torch.device("meta"):
        module = Stack(spec, causal=stack == "decoder", cross=cross, shared=shared, topology=topology)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def layout_params(spec: ModelSpec, layout: str) -> int:
    topology = "encoder_decoder" if layout == "encoder_decoder" else "decoder"  # a lone stack
    return sum(stack_params(spec, stack, cross, topology) for stack, cross in _LAYOUTS[layout])


def rescale_depth(spec: ModelSpec, factor: float) -> ModelSpec:
    """``factor`` times the layers at the baseline's non-embedding parameter count."""
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 0:
        raise UserError(f"depth factor must be a positive number, got {factor!r}")
    layers = max(1, round(spec.n_layers * factor))
    heads = max(1, round(spec.n_heads * spec.n_layers / layers))
    head_dim = spec.head_dim
    keeps_head = spec.d_head or (spec.d_model % heads == 0 and spec.d_model // heads == head_dim)
    shaped = spec.replace(n_layers=layers, n_heads=heads, d_head=spec.d_head if keeps_head else head_dim)

    # parameters are linear in d_ff: p(d) = p(d0) + slope (d - d0), per layout
    lo, hi = spec.d_ff, 2 * spec.d_ff
    solutions: dict[str, tuple[float, float, int]] = {}
    for layout in _LAYOUTS:
        target = layout_params(spec, layout)
        p_lo = layout_params(shaped.replace(d_ff=lo), layout)
        p_hi = layout_params(shaped.replace(d_ff=hi), layout)
        slope = (p_hi - p_lo) / (hi - lo)
        if slope <= 0:
            raise UserError(f"depth: the {spec.ffn!r} FFN's parameters do not grow with d_ff, so depth cannot be traded for width")
        solutions[layout] = (lo + (target - p_lo) / slope, slope, target)

    def worst(d_ff: int) -> float:
        return max(abs(slope * (d_ff - best)) / target for best, slope, target in solutions.values())

    bests = [best for best, _, _ in solutions.values()]
    if min(bests) < 1:
        raise UserError(
            f"depth x{factor}: {layers} layers of {heads} heads leave no room for the FFN at this size "
            "(d_ff would be < 1); use a smaller factor"
        )
    d_ff = min(range(int(min(bests)), int(max(bests)) + 2), key=worst)
    aligned = max(8, 8 * round(d_ff / 8))  # a multiple of 8 (friendlier to matmul kernels) when as close
    if worst(aligned) <= worst(d_ff) + 1e-3:
        d_ff = aligned
    return shaped.replace(d_ff=d_ff)


_NARANG = "Narang et al. 2021, arXiv 2102.11972"


@register_variant("depth", slot="shape", paper=_NARANG, matches="params")
def depth(spec: ModelSpec, factor: float = 2.0) -> ModelSpec:
    """factor x the layers, d_ff and heads rescaled to keep the parameter count (default x2)."""
    return rescale_depth(spec, factor)


# Narang et al.'s four depths, by name (not selectors: the shape is computed from the incoming spec)
@register_variant("depth_x2", slot="shape", paper=_NARANG, matches="params")
def depth_x2(spec: ModelSpec) -> ModelSpec:
    """2 x the layers at constant parameters (Narang et al.: 24 layers, d_ff 1536, H 6)."""
    return rescale_depth(spec, 2.0)


@register_variant("depth_x1.5", slot="shape", paper=_NARANG, matches="params")
def depth_x1_5(spec: ModelSpec) -> ModelSpec:
    """1.5 x the layers at constant parameters (Narang et al.: 18 layers, d_ff 2048, H 8)."""
    return rescale_depth(spec, 1.5)


@register_variant("depth_x0.67", slot="shape", paper=_NARANG, matches="params")
def depth_x0_67(spec: ModelSpec) -> ModelSpec:
    """0.667 x the layers at constant parameters (Narang et al.: 8 layers, d_ff 4608, H 18)."""
    return rescale_depth(spec, 2 / 3)


@register_variant("depth_x0.5", slot="shape", paper=_NARANG, matches="params")
def depth_x0_5(spec: ModelSpec) -> ModelSpec:
    """0.5 x the layers at constant parameters (Narang et al.: 6 layers, d_ff 6144, H 24)."""
    return rescale_depth(spec, 0.5)
