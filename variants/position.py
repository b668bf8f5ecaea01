"""Position information.

sinusoidal (baseline; Vaswani et al. 2017): PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(...),
added to the input embedding.
learned (Gehring et al. 2017; Devlin et al. 2019): a trained table of max_len x d_model, added.
none: no position signal (a causal decoder can still infer order; Haviv et al. 2022).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec
from modtransfer.variant import register_variant


class PositionBase(nn.Module):
    """No position signal; the base of every position component."""

    rotates = False

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def embed(self, x: Tensor) -> Tensor:
        return x

    def bias(self, q_len: int, k_len: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        return None

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return q, k


register_component("position", "none")(PositionBase)


def sinusoid_table(n: int, d: int) -> Tensor:
    """The fixed sin/cos table of Vaswani et al. 2017, shape [n, d]."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


@register_component("position", "sinusoidal", paper="Vaswani et al. 2017, arXiv 1706.03762")
class Sinusoidal(PositionBase):
    """Adds the fixed sinusoid table (a buffer, not saved in the state dict)."""

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__(spec, causal)
        self.register_buffer("table", sinusoid_table(spec.max_len, spec.d_model), persistent=False)

    def embed(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[1]].to(x.dtype)


@register_component("position", "learned", paper="Gehring et al. 2017, arXiv 1705.03122")
class Learned(PositionBase):
    """Adds a trained table of max_len positions."""

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__(spec, causal)
        self.table = nn.Parameter(torch.randn(spec.max_len, spec.d_model) * 0.02)

    def embed(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[1]]


@register_variant("sinusoidal", slot="position", paper="Vaswani et al. 2017, arXiv 1706.03762")
def sinusoidal(spec: ModelSpec) -> ModelSpec:
    """Fixed sinusoidal absolute positions added to the embeddings."""
    return spec.replace(position="sinusoidal")


@register_variant("learned", slot="position", paper="Gehring et al. 2017, arXiv 1705.03122")
def learned(spec: ModelSpec) -> ModelSpec:
    """Learned absolute position embeddings added to the input."""
    return spec.replace(position="learned")


@register_variant("no_position", slot="position", paper="Haviv et al. 2022, arXiv 2203.16634")
def no_position(spec: ModelSpec) -> ModelSpec:
    """No position information at all."""
    return spec.replace(position="none")
