"""QK-norm (cosine) attention (Henry et al. 2020, arXiv 2010.04245): the README's AttentionBase example."""

import torch
import torch.nn.functional as F

from modtransfer import AttentionBase, ModelSpec, register_component, register_variant


@register_component("attention", "qk_cosine", paper="Henry et al. 2020, arXiv 2010.04245")
class QKNormAttention(AttentionBase):
    """Logits g * cos(q, k): unit-length queries and keys, a learned scale g (init log2(L^2 - L))."""

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        self.g = torch.nn.Parameter(torch.tensor(float(max(spec.max_len * (spec.max_len - 1), 2))).log2())

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.g * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)


@register_variant("qk_cosine", slot="attention", paper="Henry et al. 2020, arXiv 2010.04245")
def qk_cosine(spec: ModelSpec) -> ModelSpec:
    """Query-key normalisation: cosine-similarity attention logits with a learned scale."""
    return spec.replace(attention="qk_cosine")
