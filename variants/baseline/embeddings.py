"""The baseline's embedding, tied (Press & Wolf 2017, arXiv 1608.05859): one matrix E [V, d]
embeds every input stack and scores the output (logits = h E^T); inputs are multiplied by sqrt(d)
(Vaswani et al. 2017, section 3.4) and E ~ N(0, 1/d), so inputs and tied logits have unit scale.
Other tyings, factorized and adaptive inputs are modifications, in :mod:`modtransfer.variants.embeddings`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec


def embedding_matrix(vocab: int, dim: int) -> nn.Parameter:
    """N(0, 1/d) init, so that sqrt(d)-scaled inputs and tied logits both have unit scale."""
    return nn.Parameter(torch.randn(vocab, dim) / math.sqrt(dim))


def topology_stacks(topology: str) -> list[str]:
    """The stacks that take token inputs in a topology."""
    return {"decoder": ["decoder"], "encoder": ["encoder"]}.get(topology, ["encoder", "decoder"])


@register_component("embedding", "tied", paper="Press & Wolf 2017, arXiv 1608.05859")
class TiedEmbedding(nn.Module):
    """One matrix for every input and for the output."""

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        self.weight = embedding_matrix(spec.vocab_size, spec.d_model)
        self.scale = math.sqrt(spec.d_model)
        self.output_dim = spec.d_model

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return F.embedding(tokens, self.weight) * self.scale

    def output_weight(self) -> Tensor | None:
        return self.weight

    def to_output(self, h: Tensor) -> Tensor:
        return h
