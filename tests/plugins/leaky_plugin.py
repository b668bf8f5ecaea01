"""A plugin whose variant breaks the contract: its FFN mixes in the mean over all positions.

Adding mean_t(x) lets every position see every other one, so a decoder reads future tokens
(``check`` reports a causality failure) and an encoder reads padding (a padding failure).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from modtransfer import ModelSpec, register_component, register_variant


@register_component("ffn", "leaky_mean")
class LeakyMeanFFN(nn.Module):
    """act((x + mean_t x) W1) W2: position-mixing, which a FFN must never be."""

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.w1 = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.w2 = nn.Linear(spec.d_ff, spec.d_model, bias=False)
        self.act = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.act(self.w1(x + x.mean(dim=1, keepdim=True))))


@register_variant("leaky_ffn", slot="ffn")
def leaky_ffn(spec: ModelSpec) -> ModelSpec:
    """A FFN that averages over positions (leaks future tokens and padding)."""
    return spec.replace(ffn="leaky_mean")
