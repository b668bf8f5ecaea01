"""Position information.

sinusoidal (baseline; Vaswani et al. 2017): PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(...),
added to the input embedding.
learned (Gehring et al. 2017; Devlin et al. 2019): a trained table of max_len x d_model, added.
none: no position signal (a causal decoder can still infer order; Haviv et al. 2022).
rope (Su et al. 2021, RoFormer, arXiv 2104.09864): q and k of every head rotated by an angle
proportional to their position, so q_m . k_n depends on m - n only.
relative_bias (Raffel et al. 2020, T5, arXiv 1910.10683): a learned scalar per head and per
log-spaced bucket of the offset k - q, added to the attention logits; one table per stack.
alibi (Press et al. 2022, arXiv 2108.12409): a fixed bias -m_h |i - j| with geometric slopes m_h.

A component that adds a bias to the logits sets ``adds_bias = True`` (attention components that
have no logits, e.g. linear attention, reject it at build time); one that rotates q and k sets
``rotates = True``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant, selector
from modtransfer.variants.baseline.position import PositionBase


def offsets(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """Relative positions k - q [q_len, k_len]; queries are the last q_len of the k_len positions."""
    q_pos = torch.arange(q_len, device=device) + (k_len - q_len)
    k_pos = torch.arange(k_len, device=device)
    return k_pos[None, :] - q_pos[:, None]


@register_component("position", "learned", paper="Gehring et al. 2017, arXiv 1705.03122")
class Learned(PositionBase):
    """Adds a trained table of max_len positions."""

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__(spec, causal)
        self.table = nn.Parameter(torch.randn(spec.max_len, spec.d_model) * 0.02)

    def embed(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[1]]


# -- RoPE ------------------------------------------------------------------------------
ROPE_BASE = 10000.0


@register_component("position", "rope", paper="Su et al. 2021, arXiv 2104.09864")
class RotaryEmbedding(PositionBase):
    """Rotary position embedding (RoFormer, Su et al. 2021, eq. 13-15).

    Each pair of channels (x_i, x_{i+d/2}) of a head's query or key at position t is rotated by
    the angle t * theta_i, theta_i = 10000^(-2i/d):
        R_t x = x * cos(t theta) + rotate_half(x) * sin(t theta).
    Since R_m^T R_n = R_{n-m}, the logit (R_m q) . (R_n k) depends on the offset n - m only, and
    rotations keep norms. Pairing channel i with i + d/2 rather than with its neighbour (the
    paper's layout) is a fixed permutation of channels, which learned W_q, W_k absorb.
    No absolute position is added to the input. cos/sin are cached for max_len positions as
    non-persistent buffers.
    """

    rotates = True

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__(spec, causal)
        d = spec.head_dim
        if d % 2:
            raise UserError(f"position 'rope' rotates pairs of channels and needs an even head dimension, "
                            f"got d_head={d}; change d_model/n_heads or set an even d_head")
        self.max_len = spec.max_len
        theta = ROPE_BASE ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        angle = torch.arange(spec.max_len, dtype=torch.float32)[:, None] * theta[None, :]
        angle = torch.cat([angle, angle], dim=-1)                        # [max_len, d]
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def rotate_one(self, x: Tensor, start: int = 0) -> Tensor:
        """Rotate x [..., T, d] as positions start .. start + T - 1."""
        n = x.shape[-2]
        if start + n > self.max_len:
            raise ValueError(f"RotaryEmbedding: sequence of {start + n} positions exceeds max_len={self.max_len}")
        cos = self.cos[start:start + n].to(x.dtype)
        sin = self.sin[start:start + n].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q [B, H, Tq, d], k [B, H|1, Tk, d]; queries are the last Tq of the Tk positions."""
        return self.rotate_one(q, k.shape[-2] - q.shape[-2]), self.rotate_one(k)


# -- T5 relative position bias ---------------------------------------------------------
def relative_position_bucket(relative: Tensor, *, bidirectional: bool, n_buckets: int, max_distance: int) -> Tensor:
    """T5's bucket of each offset k - q (Raffel et al. 2020): exact up to n/2, then log-spaced.

    Bidirectional: half the buckets for keys before the query, half for keys after it.
    Unidirectional (causal): only keys at or before the query get distinct buckets; later keys
    share bucket 0 (they are masked anyway). Offsets beyond max_distance share the last bucket.
    """
    bucket = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (relative > 0).long() * n_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = n_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (n_buckets - exact)).long()).clamp(max=n_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


@register_component("position", "relative_bias", paper="Raffel et al. 2020, arXiv 1910.10683")
class RelativePositionBias(PositionBase):
    """T5's shared relative position bias (Raffel et al. 2020, section 2.1).

    logits_h[i, j] += b_h[bucket(j - i)]: a learned scalar per head and per bucket of the offset,
    with ``rel_buckets`` buckets log-spaced up to ``rel_max_distance``; bidirectional buckets in an
    encoder, unidirectional in a causal decoder. One table per stack, shared by all its layers;
    no absolute position is added. Table init N(0, 1/d_model), the scale of the public T5 code.
    """

    adds_bias = True

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__(spec, causal)
        self.n_buckets, self.max_distance = spec.rel_buckets, spec.rel_max_distance
        half = self.n_buckets if causal else self.n_buckets // 2
        if half < 2:
            raise UserError(f"position 'relative_bias' needs rel_buckets >= {2 if causal else 4}, "
                            f"got {self.n_buckets}")
        if self.max_distance <= half // 2:
            raise UserError(f"position 'relative_bias' needs rel_max_distance > {half // 2} (the exact buckets) "
                            f"for rel_buckets={self.n_buckets}, got {self.max_distance}")
        self.table = nn.Parameter(torch.randn(self.n_buckets, spec.n_heads) * spec.d_model ** -0.5)

    def buckets(self, q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
        return relative_position_bucket(offsets(q_len, k_len, device), bidirectional=not self.causal,
                                        n_buckets=self.n_buckets, max_distance=self.max_distance)

    def bias(self, q_len: int, k_len: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return self.table[self.buckets(q_len, k_len, self.table.device)].permute(2, 0, 1).to(device, dtype)


# -- ALiBi -----------------------------------------------------------------------------
def alibi_slopes(n_heads: int) -> list[float]:
    """Press et al. 2022: for n a power of 2, m_h = 2^(-8h/n), h = 1..n (a geometric sequence).

    Otherwise the slopes of the largest power of two n0 < n, then every other slope of 2 n0.
    """

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    n0 = 2 ** int(math.floor(math.log2(n_heads)))
    if n0 == n_heads:
        return geometric(n_heads)
    return geometric(n0) + geometric(2 * n0)[0::2][: n_heads - n0]


@register_component("position", "alibi", paper="Press et al. 2022, arXiv 2108.12409")
class ALiBi(PositionBase):
    """Attention with linear biases (Press et al. 2022): logits_h[i, j] += -m_h |i - j|.

    Fixed (not learned) per-head slopes m_h (see :func:`alibi_slopes`); no position embedding is
    added. In a causal decoder only j <= i is visible, so this is the paper's m_h (j - i); an
    encoder uses the symmetric distance.
    """

    adds_bias = True

    def __init__(self, spec: ModelSpec, causal: bool = False) -> None:
        super().__init__(spec, causal)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(spec.n_heads)), persistent=False)

    def bias(self, q_len: int, k_len: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        distance = offsets(q_len, k_len, self.slopes.device).abs().to(self.slopes.dtype)
        return (-self.slopes[:, None, None] * distance[None]).to(device, dtype)


# -- variants --------------------------------------------------------------------------
selector("sinusoidal", slot="position", paper="Vaswani et al. 2017, arXiv 1706.03762", position="sinusoidal",
         description="Fixed sinusoidal absolute positions added to the embeddings.")
selector("learned", slot="position", paper="Gehring et al. 2017, arXiv 1705.03122", position="learned",
         description="Learned absolute position embeddings added to the input.")
selector("no_position", slot="position", paper="Haviv et al. 2022, arXiv 2203.16634", position="none",
         description="No position information at all.")
selector("rope", slot="position", paper="Su et al. 2021, arXiv 2104.09864", position="rope",
         description="Rotary position embedding on the queries and keys of every self-attention head.")


@register_variant("relative_bias", slot="position", paper="Raffel et al. 2020, arXiv 1910.10683")
def relative_bias(spec: ModelSpec, buckets: int | None = None, max_distance: int | None = None) -> ModelSpec:
    """T5 bucketed relative position bias, one table per stack shared by its layers."""
    changes: dict[str, object] = {"position": "relative_bias"}
    if buckets is not None:
        changes["rel_buckets"] = buckets
    if max_distance is not None:
        changes["rel_max_distance"] = max_distance
    return spec.replace(**changes)


selector("alibi", slot="position", paper="Press et al. 2022, arXiv 2108.12409", position="alibi",
         description="ALiBi: a fixed per-head linear penalty on the distance between query and key.")
