"""Multi-head attention (Vaswani et al. 2017) on ``scaled_dot_product_attention``.

softmax(Q K^T / sqrt(d_k) + B) V, with B the position bias, the causal mask and the padding
mask merged into one additive mask only when one is needed (otherwise ``is_causal``).
Self-attention uses one fused QKV projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec


def additive_mask(
    q_len: int, k_len: int, *, causal: bool, pad_mask: Tensor | None, bias: Tensor | None,
    device: torch.device, dtype: torch.dtype,
) -> Tensor:
    """One float mask [B|1, H|1, q_len, k_len]: bias, -inf above the diagonal, -inf at pads."""
    mask = torch.zeros(1, 1, q_len, k_len, device=device, dtype=dtype)
    if bias is not None:
        mask = mask + bias.to(dtype)[None]
    if causal:
        upper = torch.ones(q_len, k_len, device=device, dtype=torch.bool).triu(1 + k_len - q_len)
        mask = mask.masked_fill(upper, float("-inf"))
    if pad_mask is not None:
        mask = mask.masked_fill(pad_mask[:, None, None, :], float("-inf"))
    return mask


@register_component("attention", "sdpa", paper="Vaswani et al. 2017, arXiv 1706.03762")
class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention (self or cross)."""

    scaled = True

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__()
        self.causal, self.cross = causal, cross
        self.n_heads, self.d_head = spec.n_heads, spec.head_dim
        inner = self.n_heads * self.d_head
        if cross:
            self.q = nn.Linear(spec.d_model, inner, bias=False)
            self.kv = nn.Linear(spec.d_model, 2 * inner, bias=False)
        else:
            self.qkv = nn.Linear(spec.d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, spec.d_model, bias=False)
        self.dropout = spec.dropout
        self.scale = 1.0 / math.sqrt(self.d_head) if self.scaled else 1.0

    def heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.d_head).transpose(1, 2)

    def project(self, x: Tensor, kv: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if self.cross:
            assert kv is not None, "cross-attention needs memory"
            k, v = self.kv(kv).chunk(2, dim=-1)
            return self.heads(self.q(x)), self.heads(k), self.heads(v)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.heads(q), self.heads(k), self.heads(v)

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        q, k, v = self.project(x, kv)
        if position is not None and position.rotates and not self.cross:
            q, k = position.rotate(q, k)
        out = self.attend(q, k, v, pad_mask=pad_mask, bias=None if self.cross else bias)
        b, _, n, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None) -> Tensor:
        drop = self.dropout if self.training else 0.0
        if pad_mask is None and bias is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=self.causal, scale=self.scale)
        mask = additive_mask(q.shape[2], k.shape[2], causal=self.causal, pad_mask=pad_mask, bias=bias,
                             device=q.device, dtype=q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=self.scale)
