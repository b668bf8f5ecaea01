"""Normalisation layers.

LayerNorm (Ba et al. 2016, arXiv 1607.06450): y = (x - mean) / sqrt(var + eps) * g + b.
RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467): y = x / sqrt(mean(x^2) + eps) * g, no
centring and no bias; cheaper, and in Narang et al. 2021 one of the few changes that helped.

LayerNorm (the baseline) and :class:`NormBase` live in :mod:`modtransfer.variants.baseline.norms`.
:class:`NormBase` (exported as ``modtransfer.NormBase``) is the base for plugins: a class
``cls(dim, eps)`` is already a norm factory; a subclass overrides :meth:`NormBase.normalise`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.norms import NormBase


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


selector("rmsnorm", slot="norm", paper="Zhang & Sennrich 2019, arXiv 1910.07467", norm="rmsnorm",
         description="RMSNorm instead of LayerNorm: rescale by the root mean square, no centring, no bias.")
