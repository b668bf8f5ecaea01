"""Modifications inside one block, from today's small-model speed records.

relu_squared (So et al. 2021, "Primer: Searching for Efficient Transformers for Language
Modeling", arXiv 2109.08668, section 3): the FFN activation max(0, x)^2.
zero_init (the modded-nanogpt record history; as in Fixup's rule 1, Zhang et al. 2019, arXiv
1901.09321, and GPT-style "zero the last layer of each residual branch"): the model's init scheme,
then the output projection of every residual branch (attention W_o, FFN W2) set to zero, so every
block starts as the identity and the trunk starts as the embedding.
token_shift (Peng et al. 2023, RWKV, arXiv 2305.13048, "token shift"; the "smear" of the
modded-nanogpt records): the input of each branch mixes each position with the one before it,
h'_t = h_t + mu * (h_{t-1} - h_t), with a learned per-channel mu (init 0: the baseline at start).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modtransfer.core.components import component, register_component
from modtransfer.core.model import apply_special_inits, clone_blocks
from modtransfer.core.spec import ModelSpec
from modtransfer.core.stack_shared import building_stack
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.residual import NormFactory, ResidualBase, output_layers


# -- ReLU^2 -------------------------------------------------------------------------------------
@register_component("activation", "relu_squared", paper="So et al. 2021, arXiv 2109.08668")
def relu_squared(x: Tensor) -> Tensor:
    """max(0, x)^2 (Primer's squared ReLU)."""
    return torch.relu(x).square()


# -- zero-initialised output projections ------------------------------------------------------
def residual_branches(model: nn.Module) -> list[nn.Module]:
    """The sublayers that residual components wrap (attention, cross-attention, FFN), once each."""
    seen: dict[int, nn.Module] = {}
    for m in model.modules():
        sub = getattr(m, "sublayer", None)
        if isinstance(sub, nn.Module):
            seen.setdefault(id(sub), sub)
    return list(seen.values())


@torch.no_grad()
def zero_branch_outputs(model: nn.Module) -> int:
    """Zero the weight (and bias) of each branch's output layers; returns how many layers were zeroed."""
    n = 0
    for sub in residual_branches(model):
        for layer in output_layers(sub):
            for p in layer.parameters(recurse=False):
                p.zero_()
            n += 1
    return n


@register_component("init", "zero_out", paper="Zhang et al. 2019, arXiv 1901.09321 (rule 1); modded-nanogpt")
def init_zero_out(model: nn.Module, spec: ModelSpec) -> None:
    """The scheme named by ``spec.option("zero_init_base")`` (the spec's init before the variant),
    its special inits and ``clone_layers``, then every residual branch's output layer set to 0."""
    base = component("init", str(spec.option("zero_init_base", "default")))
    base(model, spec)
    if not getattr(base, "finishes", False):
        apply_special_inits(model)
        if spec.clone_layers:
            clone_blocks(model)
    zero_branch_outputs(model)


init_zero_out.finishes = True  # type: ignore[attr-defined]


# -- token shift --------------------------------------------------------------------------------
def shift_right(h: Tensor, pad_mask: Tensor | None) -> Tensor:
    """h_{t-1} at position t (zeros at t = 0 and after a padded position)."""
    prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
    if pad_mask is not None and pad_mask.shape[1] == h.shape[1]:
        was_pad = torch.cat([torch.zeros_like(pad_mask[:, :1]), pad_mask[:, :-1]], dim=1)
        prev = prev.masked_fill(was_pad[..., None], 0.0)
    return prev


@register_component("residual", "token_shift", paper="Peng et al. 2023, arXiv 2305.13048")
class TokenShift(ResidualBase):
    """x + F(s(norm(x))) with s(h)_t = h_t + mu * (h_{t-1} - h_t), mu per channel, init 0.

    The shift reads only the previous position (zeros before the first and after a padded one),
    so a causal stack stays causal. Pre-norm otherwise (the stack ends with a norm). Adds d_model
    parameters per branch.
    """

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__(spec, sublayer, norm, index, n_sublayers)
        self.mu = nn.Parameter(torch.zeros(spec.d_model))
        self.shared = building_stack()

    def branch(self, x: Tensor, **kw: Any) -> Tensor:
        h = self.norm(x)
        pad = self.shared.pad_mask if self.shared is not None else None
        h = h + self.mu * (shift_right(h, pad) - h)
        return self.drop(self.sublayer(h, **kw))

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        self.mu.zero_()


# -- variants -----------------------------------------------------------------------------------
selector("relu_squared", slot="activation", paper="So et al. 2021, arXiv 2109.08668", activation="relu_squared",
         description="FFN activation ReLU(x)^2 instead of ReLU (Primer).")
selector("zero_init", slot="init", paper="modded-nanogpt records; Zhang et al. 2019, arXiv 1901.09321", init="zero_out",
         options={"zero_init_base": lambda spec: spec.init},  # the incoming scheme, applied first
         description="The model's init, then every residual branch's output projection (W_o, FFN W2) zero.")
selector("token_shift", slot="residual", paper="Peng et al. 2023, arXiv 2305.13048; modded-nanogpt smear",
         residual="token_shift",
         description="Each branch's input mixes every position with the previous one (learned per channel, init 0).")
