"""Where the norm sits around each residual branch.

pre  (baseline; Xiong et al. 2020, arXiv 2002.04745): x + F(norm(x)), final norm per stack.
post (Vaswani et al. 2017, the original Transformer): norm(x + F(x)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec
from modtransfer.variant import register_variant


@register_component("residual", "pre", paper="Xiong et al. 2020, arXiv 2002.04745")
class PreNorm(nn.Module):
    """x + F(norm(x))."""

    final_norm = True

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: Callable[..., nn.Module],
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__()
        self.norm = norm(spec.d_model, spec.norm_eps)
        self.sublayer = sublayer
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return x + self.drop(self.sublayer(self.norm(x), **kw))


@register_component("residual", "post", paper="Vaswani et al. 2017, arXiv 1706.03762")
class PostNorm(nn.Module):
    """norm(x + F(x))."""

    final_norm = False

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: Callable[..., nn.Module],
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__()
        self.norm = norm(spec.d_model, spec.norm_eps)
        self.sublayer = sublayer
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return self.norm(x + self.drop(self.sublayer(x, **kw)))


@register_variant("post_ln", slot="residual", paper="Vaswani et al. 2017, arXiv 1706.03762")
def post_ln(spec: ModelSpec) -> ModelSpec:
    """Post-LN, as in the original Transformer: norm(x + F(x)), no final norm."""
    return spec.replace(residual="post")
