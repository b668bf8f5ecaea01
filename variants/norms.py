"""Normalisation layers.

LayerNorm (Ba et al. 2016, arXiv 1607.06450): y = (x - mean) / sqrt(var + eps) * g + b.
RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467): y = x / sqrt(mean(x^2) + eps) * g, no
centring and no bias; cheaper, and in Narang et al. 2021 one of the few changes that helped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec
from modtransfer.variant import register_variant


@register_component("norm", "layernorm", paper="Ba et al. 2016, arXiv 1607.06450")
def layernorm(dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps)


class RMSNorm(nn.Module):
    """x / RMS(x) * g (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

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
