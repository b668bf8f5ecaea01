"""The baseline's feed-forward network: dense, FFN(x) = act(x W1 (+ b1)) W2 (+ b2)
(Vaswani et al. 2017, arXiv 1706.03762, eq. 2). The gated and mixture-of-experts FFNs are
modifications (:mod:`modtransfer.variants.ffn`, :mod:`modtransfer.variants.moe`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec


@register_component("ffn", "dense", paper="Vaswani et al. 2017, arXiv 1706.03762")
class DenseFFN(nn.Module):
    """act(x W1 + b1) W2 + b2 (the biases only with ``spec.bias``)."""

    honours_bias = True

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.w1 = nn.Linear(spec.d_model, spec.d_ff, bias=spec.bias)
        self.w2 = nn.Linear(spec.d_ff, spec.d_model, bias=spec.bias)
        self.act = activation
        self.drop = nn.Dropout(spec.dropout_for("ffn"))

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.drop(self.act(self.w1(x))))
