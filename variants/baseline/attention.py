"""The baseline's attention, and the base class every attention modification extends.

sdpa (Vaswani et al. 2017, arXiv 1706.03762, section 3.2): softmax(Q K^T / sqrt(d_k) + B) V per head,
on ``scaled_dot_product_attention``; B (the position bias), the causal mask and the padding mask
are merged into one additive mask only when one is needed (otherwise ``is_causal``). For 16-bit
queries on a CPU the same softmax runs in explicit matmuls (:func:`explicit_is_faster`).
Self-attention projects Q, K and V with one fused matrix, laid out as
``torch.nn.MultiheadAttention.in_proj_weight`` (rows q, k, v); ``spec.bias`` adds biases.

:class:`AttentionBase` (exported as ``modtransfer.AttentionBase``) does every duty but the logits
(projections, heads, masks, position bias and rotation, dropout, the init hooks
``branch_weights()`` / ``output_layers()``), so a modification overrides ``scores(q, k)`` only.
The modifications (unscaled, multi-query, linear) are in :mod:`modtransfer.variants.attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import component, register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec


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


def explicit_is_faster(q: Tensor) -> bool:
    """Whether softmax(Q K^T) V in explicit matmuls beats the fused ``scaled_dot_product_attention``.

    True for 16-bit queries on a CPU: there PyTorch's fused kernel (its CPU flash attention)
    takes about twice as long, forward and backward, as the explicit matmuls with the softmax in
    fp32 (bf16, batch 16 x 4 heads x 128 x 64, one thread, torch 2.13: 40 vs 19 ms). The maths
    is the same; the explicit path computes the softmax in fp32.
    """
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)


class AttentionBase(nn.Module):
    """Multi-head attention with every duty but the logits: a base class for new attentions.

    softmax(scores(q, k) + B + M) V, with B the position bias and M the causal and padding
    masks (-inf), then dropout on the weights, concatenated heads and W_o. It builds the
    projections (fused QKV for self-attention, Q and KV for cross-attention, with biases when
    ``spec.bias``), splits heads, rotates q and k when the stack's position rotates, and
    provides ``branch_weights()`` and ``output_layers()`` for init and residual schemes.
    A subclass overrides :meth:`scores` (and adds its parameters in ``__init__`` after
    ``super().__init__``); without an override the fused ``scaled_dot_product_attention`` runs.
    Class attributes: ``scaled`` (multiply by 1/sqrt(d_k) in the default scores),
    ``shared_kv`` (one key/value head), ``supports_bias`` (can add a position bias).
    """

    scaled = True
    shared_kv = False        # one K/V head for all query heads (multi-query attention)
    supports_bias = True     # can add a position bias to its logits
    honours_bias = True      # projections have additive biases when ``spec.bias`` is set

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__()
        self.causal, self.cross = causal, cross
        self.n_heads, self.d_head = spec.n_heads, spec.head_dim
        self.kv_heads = 1 if self.shared_kv else self.n_heads
        inner, kv_inner = self.n_heads * self.d_head, self.kv_heads * self.d_head
        self.split = (inner, kv_inner, kv_inner)
        if cross:
            self.q = nn.Linear(spec.d_model, inner, bias=spec.bias)
            self.kv = nn.Linear(spec.d_model, 2 * kv_inner, bias=spec.bias)
        else:
            self.qkv = nn.Linear(spec.d_model, inner + 2 * kv_inner, bias=spec.bias)
        self.out = nn.Linear(inner, spec.d_model, bias=spec.bias)
        self.dropout = spec.dropout_for("attention")
        self.scale = 1.0 / math.sqrt(self.d_head) if self.scaled else 1.0
        self._check_position(spec)

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> None:
        """Reject, at plan time, a position component whose bias this attention cannot add."""
        if cls.supports_bias:
            return
        position = component("position", spec.position)
        if getattr(position, "adds_bias", False):
            raise UserError(
                f"attention {spec.attention!r} has no attention logits to add the bias of position "
                f"{spec.position!r} to; combine it with rope, sinusoidal, learned or no_position instead"
            )

    def _check_position(self, spec: ModelSpec) -> None:
        if not self.cross:  # cross-attention takes no position bias
            self.check_spec(spec)

    def heads(self, x: Tensor, n_heads: int | None = None) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, n_heads or self.n_heads, self.d_head).transpose(1, 2)

    def project(self, x: Tensor, kv: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, T, d], k and v [B, H|1, S, d]."""
        if self.cross:
            assert kv is not None, "cross-attention needs memory"
            q = self.q(x)
            k, v = self.kv(kv).split(self.split[1:], dim=-1)
        else:
            q, k, v = self.qkv(x).split(self.split, dim=-1)
        return self.heads(q), self.heads(k, self.kv_heads), self.heads(v, self.kv_heads)

    def branch_weights(self) -> dict[str, list[Tensor]]:
        """Weights by role (views sharing storage): ``score`` (q, k), ``input`` (v), ``output`` (o)."""
        if self.cross:
            q = self.q.weight.detach()
            k, v = self.kv.weight.detach().split(self.split[1:], dim=0)
        else:
            q, k, v = self.qkv.weight.detach().split(self.split, dim=0)
        return {"score": [q, k], "input": [v], "output": [self.out.weight.detach()]}

    def output_layers(self) -> list[nn.Module]:
        """The layer that computes the branch's output (W_o)."""
        return [self.out]

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        q, k, v = self.project(x, kv)
        if position is not None and position.rotates and not self.cross:
            q, k = position.rotate(q, k)
        out = self.attend(q, k, v, pad_mask=pad_mask, bias=None if self.cross else bias)
        b, _, n, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """Attention logits [B, H, T, S] of queries q [B, H, T, d] and keys k [B, H, S, d]
        (before bias and masks): q k^T / sqrt(d_k), or q k^T when ``scaled`` is false."""
        return (q @ k.transpose(-1, -2)) * self.scale

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None) -> Tensor:
        if k.shape[1] != q.shape[1]:
            k = k.expand(-1, q.shape[1], -1, -1)
            v = v.expand(-1, q.shape[1], -1, -1)
        drop = self.dropout if self.training else 0.0
        if type(self).scores is not AttentionBase.scores or explicit_is_faster(q):  # a subclass's own logits
            mask = additive_mask(q.shape[2], k.shape[2], causal=self.causal, pad_mask=pad_mask, bias=bias,
                                 device=q.device, dtype=torch.float32)
            weights = torch.softmax(self.scores(q, k).float() + mask, dim=-1).to(v.dtype)
            return F.dropout(weights, drop, training=drop > 0) @ v
        if pad_mask is None and bias is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=self.causal, scale=self.scale)
        mask = additive_mask(q.shape[2], k.shape[2], causal=self.causal, pad_mask=pad_mask, bias=bias,
                             device=q.device, dtype=q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=self.scale)


@register_component("attention", "sdpa", paper="Vaswani et al. 2017, arXiv 1706.03762")
class MultiHeadAttention(AttentionBase):
    """Scaled dot-product multi-head attention (self or cross), the baseline."""
