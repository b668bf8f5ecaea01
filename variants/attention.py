"""Multi-head attention and its variants.

sdpa (baseline; Vaswani et al. 2017): softmax(Q K^T / sqrt(d_k) + B) V on
``scaled_dot_product_attention``, with B the position bias, the causal mask and the padding mask
merged into one additive mask only when one is needed (otherwise ``is_causal``); for bf16/fp16 on a
CPU the same softmax in explicit matmuls, which is faster there (:func:`explicit_is_faster`). Self-attention
uses one fused QKV projection (the layout of ``torch.nn.MultiheadAttention.in_proj_weight``:
rows q, k, v); with ``spec.bias`` every projection has a bias (in_proj_bias, out_proj.bias).
unscaled (Raffel et al. 2020, T5): no 1/sqrt(d_k); the factor moves into the initialisation of W_q.
multi_query (Shazeer 2019, arXiv 1911.02150): one key and one value head shared by all query heads.
linear (Katharopoulos et al. 2020, arXiv 2006.16236): phi(Q) (phi(K)^T V), linear in length.

Every attention module exposes ``branch_weights()`` (its weights by role, views of the fused
matrices, covering all its Linear layers) and ``output_layers()`` so that init schemes and
residual schemes such as Fixup and DeepNorm can initialise them part by part.

The baseline ``sdpa`` and :class:`AttentionBase` live in :mod:`modtransfer.variants.baseline.attention`.
:class:`AttentionBase` (exported as ``modtransfer.AttentionBase``) is the base for plugins: it
owns the projections, heads, masking (causal, padding), position bias and rotation, dropout
and the init hooks, so a new attention overrides only ``scores(q, k)`` (the logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.attention import MultiHeadAttention


@register_component("attention", "unscaled", paper="Raffel et al. 2020, arXiv 1910.10683")
class UnscaledAttention(MultiHeadAttention):
    """Dot-product attention without the 1/sqrt(d_k) factor: softmax(Q K^T + B) V (T5).

    The factor is folded into the initialisation instead: W_q ~ N(0, 1/(d_model d_k)), the T5
    initialisation of the query projection, so for unit-variance inputs q = x W_q has variance
    1/d_k per channel: the 1/sqrt(d_k) that scaled attention applies to a unit-variance query,
    moved into the weights, which keeps the logits at unit scale for unit-variance keys. The
    parameterisation (and with it the effective learning rate of W_q) is what differs from
    ``sdpa``. K, V and O keep the model's init. The W_q init is re-applied after any init scheme
    (``reset_special``).
    """

    scaled = False

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        self.q_std = (spec.d_model * self.d_head) ** -0.5
        self.init_query()

    @torch.no_grad()
    def init_query(self) -> None:
        self.branch_weights()["score"][0].normal_(0.0, self.q_std)

    def reset_special(self, topology: str = "", stack: str = "") -> None:
        self.init_query()


@register_component("attention", "multi_query", paper="Shazeer 2019, arXiv 1911.02150")
class MultiQueryAttention(MultiHeadAttention):
    """Multi-query attention (Shazeer 2019): H query heads share one key head and one value head.

    softmax(Q_h K^T / sqrt(d_k)) V for h = 1..H with a single K, V [S, d_k]: the K/V projections
    shrink from 2 d_model H d_k to 2 d_model d_k parameters (and the incremental-decoding
    memory by H). Applies to self- and cross-attention.
    """

    shared_kv = True


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1.0


def linear_attention(q: Tensor, k: Tensor, v: Tensor, q_num: Tensor, k_num: Tensor, eps: float = 1e-6) -> Tensor:
    """Non-causal: out_i = q_num_i (sum_j k_num_j v_j^T) / (q_i . sum_j k_j)."""
    kv = k_num.transpose(-1, -2) @ v                           # [B, H, d, e]
    den = q @ k.sum(dim=2, keepdim=True).transpose(-1, -2)     # [B, H, T, 1]
    return (q_num @ kv) / (den + eps)


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, q_num: Tensor, k_num: Tensor, eps: float = 1e-6,
                            chunk: int = 64) -> Tensor:
    """Causal: out_i = q_num_i S_i / (q_i . z_i), S_i = sum_{j<=i} k_num_j v_j^T, z_i = sum_{j<=i} k_j.

    The prefix sums S_i, z_i are carried chunk by chunk (inside a chunk the same sums are taken
    with a lower-triangular mask), so memory stays O(T d + d^2) instead of O(T d^2).
    """
    b, h, t, d = q.shape
    state = q.new_zeros(b, h, d, v.shape[-1])
    norm = q.new_zeros(b, h, d, 1)
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    outs = []
    for s in range(0, t, chunk):
        sl = slice(s, s + chunk)
        qc, kc, vc, qn, kn = q[:, :, sl], k[:, :, sl], v[:, :, sl], q_num[:, :, sl], k_num[:, :, sl]
        lower = tril[: qc.shape[2], : qc.shape[2]]
        num = (qn @ kn.transpose(-1, -2)).masked_fill(~lower, 0.0) @ vc + qn @ state
        den = (qc @ kc.transpose(-1, -2)).masked_fill(~lower, 0.0).sum(-1, keepdim=True) + qc @ norm
        outs.append(num / (den + eps))
        state = state + kn.transpose(-1, -2) @ vc
        norm = norm + kc.sum(dim=2).unsqueeze(-1)
    return torch.cat(outs, dim=2)


@register_component("attention", "linear", paper="Katharopoulos et al. 2020, arXiv 2006.16236")
class LinearAttention(MultiHeadAttention):
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

    The softmax kernel exp(q . k) is replaced by phi(q) . phi(k) with phi(x) = elu(x) + 1:
        out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j),
    O(T d^2) instead of O(T^2 d). Encoders and cross-attention sum over all keys; a causal
    decoder uses prefix sums over j <= i (eq. 9-12). Padded keys are removed by zeroing phi(k)
    and v there. With rope the numerator's phi(q), phi(k) are rotated and the denominator's are
    not (Su et al. 2021, eq. 19), which keeps the denominator positive and the numerator a
    function of the offset. There are no logits, so an additive position bias (relative_bias,
    alibi) is rejected when the model is built; there is no attention dropout.
    """

    supports_bias = False

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        if bias is not None and not self.cross:
            raise UserError("linear attention cannot add a position bias; use rope or an absolute position")
        q, k, v = self.project(x, kv)
        q, k = elu_feature_map(q), elu_feature_map(k)
        if pad_mask is not None:
            keep = (~pad_mask)[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        q_num, k_num = q, k
        if position is not None and position.rotates and not self.cross:
            q_num, k_num = position.rotate(q, k)
        attend = causal_linear_attention if self.causal else linear_attention
        out = attend(q, k, v, q_num, k_num)
        b, _, n, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))


# -- variants --------------------------------------------------------------------------
selector("unscaled_attention", slot="attention", paper="Raffel et al. 2020, arXiv 1910.10683", attention="unscaled",
         description="T5-style attention logits without 1/sqrt(d_k), the factor folded into W_q's init.")
selector("multi_query", slot="attention", paper="Shazeer 2019, arXiv 1911.02150", attention="multi_query",
         description="Multi-query attention: all query heads share one key and one value head (fewer parameters).")
selector("linear_attention", slot="attention", paper="Katharopoulos et al. 2020, arXiv 2006.16236", attention="linear",
         description="Linear attention with phi(x) = elu(x) + 1; cannot take an additive position bias.")
