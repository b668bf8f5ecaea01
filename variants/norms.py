"""Normalisation layers.

LayerNorm (Ba et al. 2016, arXiv 1607.06450): y = (x - mean) / sqrt(var + eps) * g + b.
RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467): y = x / sqrt(mean(x^2) + eps) * g, no
centring and no bias; cheaper, and in Narang et al. 2021 one of the few changes that helped.

:class:`NormBase` (exported as ``modtransfer.NormBase``) is the base for plugins: a class
``cls(dim, eps)`` is already a norm factory; a subclass overrides :meth:`NormBase.normalise`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant


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


class RMSNorm(NormBase):
    """x / RMS(x) * g (Zhang & Sennrich 2019)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


@register_component("norm", "rmsnorm", paper="Zhang & Sennrich 2019, arXiv 1910.07467")
def rmsnorm_factory(dim: int, eps: float) -> nn.Module:
    return RMSNorm(dim, eps)


@register_component("norm", "none")
def no_norm(dim: int, eps: float) -> nn.Module:
    return nn.Identity()


@register_variant("rmsnorm", slot="norm", paper="Zhang & Sennrich 2019, arXiv 1910.07467")
def rmsnorm(spec: ModelSpec) -> ModelSpec:
    """RMSNorm instead of LayerNorm: rescale by the root mean square, no centring, no bias."""
    return spec.replace(norm="rmsnorm")
