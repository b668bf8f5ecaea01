"""A plugin whose variant owns a parameter that never receives a gradient.

``check`` must report it under ``gradients``: a dead parameter inflates the parameter count a
matched comparison relies on, and usually means a wiring bug.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from modtransfer import ModelSpec, register_component, register_variant


@register_component("ffn", "dead_gate")
class DeadGateFFN(nn.Module):
    """act(x W1) W2, plus a gate parameter that forward() forgets to use."""

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.w1 = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.w2 = nn.Linear(spec.d_ff, spec.d_model, bias=False)
        self.gate = nn.Parameter(torch.ones(spec.d_ff))
        self.act = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.act(self.w1(x)))


@register_variant("dead_gate_ffn", slot="ffn")
def dead_gate_ffn(spec: ModelSpec) -> ModelSpec:
    """A FFN with an unused gate parameter."""
    return spec.replace(ffn="dead_gate")
