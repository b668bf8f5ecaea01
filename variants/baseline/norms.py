"""The baseline's normalisation, LayerNorm (Ba et al. 2016, arXiv 1607.06450):
y = (x - mean) / sqrt(var + eps) * g + b, and the base class of norm modifications.

:class:`NormBase` (exported as ``modtransfer.NormBase``): a class ``cls(dim, eps)`` is already a
norm factory; a subclass overrides :meth:`NormBase.normalise`. RMSNorm and the absence of a norm
are modifications, in :mod:`modtransfer.variants.norms`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modtransfer.core.components import register_component


@register_component("norm", "layernorm", paper="Ba et al. 2016, arXiv 1607.06450")
def layernorm(dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps)


class NormBase(nn.Module):
    """A normalisation of the last dimension: normalise(x) * g (+ b), for plugins to extend.

    ``cls(dim, eps)`` matches the norm slot's factory, so a subclass registers directly
    (``@register_component("norm", "my_norm")``). ``weight`` g (ones) is learned;
    ``bias`` b (zeros) exists when the class sets ``use_bias = True``. A subclass overrides
    :meth:`normalise` only; it must act on each position separately (never across positions).
    """

    use_bias = False

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if self.use_bias else None

    def normalise(self, x: Tensor) -> Tensor:
        """x scaled to unit root mean square over the last dimension (override this)."""
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        y = self.normalise(x) * self.weight
        return y + self.bias if self.bias is not None else y
