"""The output layer over the vocabulary.

softmax (baseline): p(y | h) = softmax(h W^T), W tied to the embedding or owned here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec

IGNORE_INDEX = -100


@register_component("output", "softmax")
class FullSoftmax(nn.Module):
    """Full softmax over the vocabulary."""

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__()
        self.proj = None if tied else nn.Linear(in_dim, spec.vocab_size, bias=False)

    def logits(self, h: Tensor, weight: Tensor | None) -> Tensor:
        return self.proj(h) if self.proj is not None else F.linear(h, weight)

    def log_probs(self, h: Tensor, weight: Tensor | None) -> Tensor:
        return F.log_softmax(self.logits(h, weight).float(), dim=-1)

    def token_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        logits = self.logits(h, weight)
        nll = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                              reduction="none")
        return nll.view(targets.shape)
