"""Attention and position modifications of today's small-model speed records.

qk_norm (Henry et al. 2020, "Query-Key Normalization for Transformers", arXiv 2010.04245;
Dehghani et al. 2023, ViT-22B, arXiv 2302.05442): queries and keys of every head are normalised
(RMS over the head's channels, a learned gain per channel) before their dot product, so the
logits are bounded whatever the scale of W_q and W_k.
attention_softcap (Gemma Team 2024, "Gemma 2", arXiv 2408.00118, section 2): the logits are
squashed to c tanh(s / c) before the softmax (c = 50 in Gemma 2).
sliding_window (Beltagy et al. 2020, Longformer, arXiv 2004.05150; Gemma 2 alternates local and
global layers): a query attends only to the ``w`` most recent keys; with a window warm-up
(the modded-nanogpt record history) ``w`` grows linearly from ``start`` to ``window`` over the
first ``warmup`` training steps.
partial_rope (Black et al. 2022, GPT-NeoX-20B, arXiv 2204.06745, ``rotary_pct``): RoPE on the
first fraction of each head's channels only; the others carry no position.

Every modification here is a component of its slot (``attention`` or ``position``), so two of
them that share a slot (qk_norm and sliding_window) are rejected by name when combined, as the
design asks of any two patches of one field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant, selector
from modtransfer.variants.baseline.attention import MultiHeadAttention, additive_mask
from modtransfer.variants.position import RotaryEmbedding

#: Gemma 2's attention logit cap (Gemma Team 2024, section 2, "Logit soft-capping").
ATTENTION_CAP = 50.0


def softcap(x: Tensor, cap: float) -> Tensor:
    """cap tanh(x / cap): close to x for |x| << cap, never beyond +-cap (Gemma 2)."""
    return cap * torch.tanh(x / cap)


# -- QK-norm ----------------------------------------------------------------------------------
@register_component("attention", "qk_norm", paper="Henry et al. 2020, arXiv 2010.04245; Dehghani et al. 2023")
class QKNormAttention(MultiHeadAttention):
    """softmax(n(q) n(k)^T / sqrt(d_k)) V with n(x) = g * x / rms(x) per head.

    ``g_q`` and ``g_k`` are learned gains over the head's d_k channels (shared by the heads, init
    1), applied after the projection and before the rotation of rope (the order of ViT-22B and
    the modded-nanogpt records). Since n(c x) = n(x) for c > 0, the output does not change when
    W_q or W_k (without bias) is rescaled: the logits are bounded by d_k |g_q| |g_k| / sqrt(d_k).
    Adds 2 d_k parameters per attention (self and cross).
    """

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        self.q_gain = nn.Parameter(torch.ones(self.d_head))
        self.k_gain = nn.Parameter(torch.ones(self.d_head))
        self.eps = spec.norm_eps

    def project(self, x: Tensor, kv: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super().project(x, kv)
        d = (self.d_head,)
        return F.rms_norm(q, d, self.q_gain, self.eps), F.rms_norm(k, d, self.k_gain, self.eps), v


# -- soft-capped logits -------------------------------------------------------------------------
@register_component("attention", "softcap", paper="Gemma Team 2024, arXiv 2408.00118")
class SoftCapAttention(MultiHeadAttention):
    """softmax(c tanh(Q K^T / (c sqrt(d_k))) + B) V: logits soft-capped at +-c before the masks.

    ``c`` is ``spec.option("attention_cap")`` (50, Gemma 2's value, by default). The cap bounds
    each logit, so no head can put all its weight on one key by growing its logits without limit.
    No parameters of its own; the softmax runs in explicit matmuls (the fused kernel cannot cap).
    """

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        self.cap = float(spec.option("attention_cap", ATTENTION_CAP))
        if self.cap <= 0:
            raise UserError(f"attention_softcap: cap must be > 0, got {self.cap:g}")

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return softcap(super().scores(q, k), self.cap)


# -- sliding window ---------------------------------------------------------------------------
def window_at(step: int, window: int, start: int, warmup: int) -> int:
    """The window after ``step`` training steps: ``start`` growing linearly to ``window`` over ``warmup`` steps."""
    if warmup <= 0 or step >= warmup:
        return window
    return start + (window - start) * step // warmup


def outside_window(q_len: int, k_len: int, window: int, causal: bool, device: torch.device | None = None) -> Tensor:
    """True [q_len, k_len] where key j is not among query i's ``window`` nearest: i - j >= window
    (causal: the ``window`` most recent keys, i itself included) or |i - j| >= window (bidirectional)."""
    q_pos = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    k_pos = torch.arange(k_len, device=device)[None, :]
    distance = q_pos - k_pos if causal else (q_pos - k_pos).abs()
    return distance >= window


@register_component("attention", "sliding_window", paper="Beltagy et al. 2020, arXiv 2004.05150; Gemma Team 2024")
class SlidingWindowAttention(MultiHeadAttention):
    """Self-attention over the ``w`` nearest keys only, ``w`` warmed up over training.

    ``w`` = :func:`window_at` of the training steps this module has taken (forward passes in
    training mode with autograd on, one per optimiser step in the harness's training loops), from
    the options ``window`` (0: the task's max_len / 4), ``window_start`` (0: window / 4) and
    ``window_warmup`` (steps); evaluation uses the window reached so far. Cross-attention is left global (its keys are the source). Padded query rows
    keep the baseline's mask, so a padded position never has every key masked. No parameters.
    """

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        self.window = int(spec.option("window", 0)) or max(1, spec.max_len // 4)
        self.start = int(spec.option("window_start", 0)) or max(1, self.window // 4)
        self.warmup = int(spec.option("window_warmup", 0))
        if not 1 <= self.start <= self.window or self.warmup < 0:
            raise UserError(f"sliding_window: need 1 <= start <= window and warmup >= 0, got start={self.start}, "
                            f"window={self.window}, warmup={self.warmup}")
        self.steps_seen = 0

    @property
    def current_window(self) -> int:
        return window_at(self.steps_seen, self.window, self.start, self.warmup)

    def forward(self, x: Tensor, kv: Tensor | None = None, **kw: object) -> Tensor:
        out = super().forward(x, kv, **kw)  # type: ignore[arg-type]
        if self.training and torch.is_grad_enabled():
            self.steps_seen += 1
        return out

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None) -> Tensor:
        w = self.current_window
        if self.cross or w >= max(q.shape[2], k.shape[2]):
            return super().attend(q, k, v, pad_mask=pad_mask, bias=bias)
        mask = additive_mask(q.shape[2], k.shape[2], causal=self.causal, pad_mask=pad_mask, bias=bias,
                             device=q.device, dtype=torch.float32)
        far = outside_window(q.shape[2], k.shape[2], w, self.causal, q.device)[None, None]
        if pad_mask is not None:  # self-attention: the key mask is also the query mask
            far = far & ~pad_mask[:, None, :, None]
        mask = mask.masked_fill(far, float("-inf"))
        drop = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=drop, scale=self.scale)


# -- partial RoPE -----------------------------------------------------------------------------
@register_component("position", "partial_rope", paper="Black et al. 2022, arXiv 2204.06745")
class PartialRotaryEmbedding(RotaryEmbedding):
    """RoPE on the first ``r`` channels of each head, r = the option ``rope_fraction`` of d_k
    (rounded down to an even number, at least 2); the other d_k - r channels are not rotated,
    so their share of a logit is the same at every offset. No parameters."""

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        fraction = float(spec.option("rope_fraction", 0.5))
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"partial_rope: fraction must be in (0, 1], got {fraction:g}")
        self.rotated = max(2, int(spec.head_dim * fraction) // 2 * 2)
        super().__init__(spec.replace(d_head=self.rotated), causal)

    def rotate_one(self, x: Tensor, start: int = 0) -> Tensor:
        r = self.rotated
        return torch.cat([super().rotate_one(x[..., :r], start), x[..., r:]], dim=-1)


# -- variants -----------------------------------------------------------------------------------
selector("qk_norm", slot="attention",
         paper="Henry et al. 2020, arXiv 2010.04245; Dehghani et al. 2023, arXiv 2302.05442", attention="qk_norm",
         description="RMS-normalised queries and keys (learned per-channel gains) before their dot product.")


@register_variant("attention_softcap", slot="attention", paper="Gemma Team 2024, arXiv 2408.00118")
def attention_softcap(spec: ModelSpec, cap: float = ATTENTION_CAP) -> ModelSpec:
    """Attention logits soft-capped to cap tanh(s / cap) (cap 50, Gemma 2)."""
    return spec.replace(attention="softcap").with_options(attention_cap=float(cap))


@register_variant("sliding_window", slot="attention", paper="Beltagy et al. 2020, arXiv 2004.05150; "
                  "Gemma Team 2024, arXiv 2408.00118; modded-nanogpt window warm-up")
def sliding_window(spec: ModelSpec, window: int = 0, start: int = 0, warmup: int = 200) -> ModelSpec:
    """Self-attention to the w nearest keys, w warmed up from start to window over warmup steps.

    Defaults (0): window = the task's max_len / 4 (decided when the model is built, after the task
    has set max_len), start = window / 4; warmup 200 steps.
    """
    if window < 0 or start < 0 or (window and start > window) or warmup < 0:
        raise UserError(f"sliding_window: need 0 <= start <= window and warmup >= 0, got start={start}, "
                        f"window={window}, warmup={warmup}")
    return spec.replace(attention="sliding_window").with_options(window=window, window_start=start,
                                                                 window_warmup=warmup)


@register_variant("partial_rope", slot="position", paper="Black et al. 2022, arXiv 2204.06745")
def partial_rope(spec: ModelSpec, fraction: float = 0.5) -> ModelSpec:
    """Rotary positions on a fraction (half by default) of each head's channels, the rest position-free."""
    return spec.replace(position="partial_rope").with_options(rope_fraction=float(fraction))
