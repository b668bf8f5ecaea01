"""The baseline's position signal, sinusoidal (Vaswani et al. 2017, arXiv 1706.03762, section 3.5):
PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)), added to the input embedding;
and :class:`PositionBase`, the base of every position component.

:class:`PositionBase` adds nothing, so it is also registered as the position component ``none``
(here, beside the class, which keeps the registry's order: ``none`` first). The modifications
(learned, rope, relative_bias, alibi) are in :mod:`modtransfer.variants.position`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec


class PositionBase(nn.Module):
    """No position signal; the base of every position component."""

    rotates = False
    adds_bias = False

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
