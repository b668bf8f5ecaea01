"""Token embeddings and how they are tied to the output layer.

tied (baseline; Press & Wolf 2017, arXiv 1608.05859): one matrix E [V, d] embeds the encoder
input, the decoder input and scores the output (logits = h E^T); inputs are scaled by sqrt(d)
(Vaswani et al. 2017).
untied: every use has its own matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec
from modtransfer.variant import register_variant


def embedding_matrix(vocab: int, dim: int) -> nn.Parameter:
    """N(0, 1/d) init, so that sqrt(d)-scaled inputs and tied logits both have unit scale."""
    return nn.Parameter(torch.randn(vocab, dim) / math.sqrt(dim))


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


@register_component("embedding", "untied")
class UntiedEmbedding(nn.Module):
    """Separate input matrices per stack; the output layer owns its own matrix."""

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        stacks = ["encoder", "decoder"] if topology == "encoder_decoder" else [
            "decoder" if topology == "decoder" else "encoder"]
        self.tables = nn.ParameterDict({s: embedding_matrix(spec.vocab_size, spec.d_model) for s in stacks})
        self.scale = math.sqrt(spec.d_model)
        self.output_dim = spec.d_model

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return F.embedding(tokens, self.tables[stack]) * self.scale

    def output_weight(self) -> Tensor | None:
        return None

    def to_output(self, h: Tensor) -> Tensor:
        return h


@register_variant("untied_embedding", slot="embedding", paper="Narang et al. 2021, arXiv 2102.11972",
                  requires=("vocab",))
def untied_embedding(spec: ModelSpec) -> ModelSpec:
    """Separate input embeddings per stack and a separate output matrix (adds V x d per use)."""
    return spec.replace(embedding="untied")
