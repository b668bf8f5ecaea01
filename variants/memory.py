"""Product-key memory (Lample et al. 2019, "Large Memory Layers with Product Keys", NeurIPS,
arXiv 1907.05242) in place of one FFN.

A query net maps x to q [heads, d_k]; each half of q scores its own set of n sub-keys
(K1, K2 [heads, n, d_k/2]); the top-k of each half are combined into k^2 candidate keys of the
product set K1 x K2 (n^2 keys in all, score s1_i + s2_j), whose top-k are looked up in a value
table of n^2 rows: m(x) = sum_heads sum_{i in top-k} softmax(s)_i v_i. Only 2 n sub-key scores
and k^2 candidates are computed per head, not n^2.

One memory replaces the FFN of the middle layer (``n_layers // 2``) of the decoder, as Lample et
al. place one memory in a language model's middle layer; a model without a decoder has none,
so the variant needs one. At Narang et al.'s shape (n = 512, 262,144 values of width 768, 4
heads, d_k 512, k = 32) that is 421M parameters, Table 1's row. Lample et al.'s batch
normalisation of the query is left out: it mixes statistics across the positions of a batch,
which would let a padded or later token change a real position's output. Each position reads the
memory alone, so causality and padding hold as for a dense FFN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.ffn import DenseFFN

_LAMPLE = "Lample et al. 2019, arXiv 1907.05242"
DEFAULTS = {"pkm_keys": 32, "pkm_heads": 4, "pkm_topk": 32, "pkm_dim": 0}   # pkm_dim 0: d_model


class ProductKeyMemory(nn.Module):
    """A product-key memory layer: [..., d_model] -> [..., d_model], position by position."""

    conditional_grad = True  # values (and sub-keys) outside every top-k of a batch get no gradient

    def __init__(self, spec: ModelSpec, n_keys: int, heads: int, topk: int, d_key: int) -> None:
        super().__init__()
        if d_key % 2 or not 1 <= topk <= n_keys:
            raise UserError(f"product-key memory: d_key must be even and 1 <= topk <= n_keys; got d_key={d_key}, "
                            f"topk={topk}, n_keys={n_keys}")
        self.n_keys, self.heads, self.topk, self.d_key = n_keys, heads, topk, d_key
        self.query = nn.Linear(spec.d_model, heads * d_key, bias=spec.bias)
        self.subkeys = nn.Parameter(torch.randn(2, heads, n_keys, d_key // 2) / (d_key // 2) ** 0.5)
        self.values = nn.Embedding(n_keys * n_keys, spec.d_model)
        nn.init.normal_(self.values.weight, 0.0, spec.d_model ** -0.5)

    def lookup(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores [..., heads, topk] and value indices [..., heads, topk] of the best product keys."""
        q = self.query(x).unflatten(-1, (self.heads, 2, self.d_key // 2))            # [..., H, 2, d/2]
        s = torch.einsum("...hcd,chnd->...hcn", q, self.subkeys)                    # [..., H, 2, n]
        s1, i1 = s[..., 0, :].topk(self.topk, dim=-1)
        s2, i2 = s[..., 1, :].topk(self.topk, dim=-1)
        cand = (s1[..., :, None] + s2[..., None, :]).flatten(-2)                   # [..., H, k*k]
        idx = (i1[..., :, None] * self.n_keys + i2[..., None, :]).flatten(-2)
        best, where = cand.topk(self.topk, dim=-1)
        return best, idx.gather(-1, where)

    def forward(self, x: Tensor) -> Tensor:
        scores, idx = self.lookup(x)
        weights = F.softmax(scores.float(), dim=-1).to(x.dtype)                      # [..., H, k]
        values = self.values(idx)                                                   # [..., H, k, D]
        return (weights[..., None] * values).sum(dim=(-3, -2))


@register_component("ffn", "pkm", paper=_LAMPLE, honours_bias=True)
def pkm_ffn(spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0,
            stack: str = "decoder") -> nn.Module:
    """The memory in the middle layer of the decoder; the dense FFN everywhere else."""
    if stack != "decoder" or layer_index != spec.n_layers // 2:
        return DenseFFN(spec, activation, layer_index)
    o = {k: int(spec.option(k, v)) for k, v in DEFAULTS.items()}
    return ProductKeyMemory(spec, o["pkm_keys"], o["pkm_heads"], min(o["pkm_topk"], o["pkm_keys"]),
                            o["pkm_dim"] or spec.d_model)


pkm_ffn.takes_stack = True  # type: ignore[attr-defined]


@register_variant("product_key_memory", slot="ffn", paper=_LAMPLE, requires_any=("decoder", "encoder_decoder"))
def product_key_memory(spec: ModelSpec, n_keys: int = 32, heads: int = 4, topk: int = 32, d_key: int = 0) -> ModelSpec:
    """A product-key memory of n_keys^2 values in place of the middle decoder layer's FFN."""
    for name, value in (("n_keys", n_keys), ("heads", heads), ("topk", topk), ("d_key", d_key)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "d_key" else 1):
            raise UserError(f"product_key_memory: {name} must be a positive integer, got {value!r}")
    chosen = {"pkm_keys": n_keys, "pkm_heads": heads, "pkm_topk": topk, "pkm_dim": d_key}
    return spec.replace(ffn="pkm").with_options(**{k: v for k, v in chosen.items() if v != DEFAULTS[k]})


def memory_params(spec: ModelSpec, n_keys: int, heads: int, d_key: int) -> int:
    """Parameters of one memory, by hand (biases off): query net, sub-keys, values."""
    return spec.d_model * heads * d_key + 2 * heads * n_keys * (d_key // 2) + n_keys * n_keys * spec.d_model
