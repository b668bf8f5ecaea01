"""The baseline's output layer: the full softmax over the vocabulary, p(y | h) = softmax(h W^T),
W tied to the embedding or owned here (Vaswani et al. 2017, arXiv 1706.03762, section 3.4).
Adaptive softmax and the mixture of softmaxes are modifications, in :mod:`modtransfer.variants.output`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.spec import ModelSpec


def masked_nll(log_probs: Tensor, targets: Tensor) -> Tensor:
    """-log p(target) per position, 0 where ``targets == IGNORE_INDEX``."""
    valid = targets != IGNORE_INDEX
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, torch.zeros_like(picked))


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
