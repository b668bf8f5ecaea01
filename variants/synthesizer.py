"""Synthesizer attention (Tay et al. 2020, "Synthesizer: Rethinking Self-Attention in Transformer
Models", arXiv 2005.00743): attention weights synthesised without token-token dot products.

Self-attention's logits B [H, T, S] are replaced (or joined) by synthesised ones; the values,
heads, masks, position bias and W_o stay as in ``sdpa``, and cross-attention stays dot-product.
The seven Synthesizer rows of Narang et al. 2021's Table 1, in the form of the Mesh TensorFlow
``synthetic_attention`` they ran (``l`` = ``spec.max_len``, sliced to the sequence's length):

``dense``            B_h,i = relu(q_h,i) P, P [d_k, l] shared by the heads (the paper's two-layer
                     F(x_i) = W2 relu(W1 x_i) per head, with W1 = W_q): row i depends on x_i alone;
``random``           B_h = R_h, R [H, l, l] learned: the same weights for every input;
``factorized``       B_h = R1_h R2_h^T, R1, R2 [H, l, k] with k = 16 (factorized random);
``*_plus``           the dot-product logits plus the synthesised ones, q k^T / sqrt(d_k) + B;
``*_plus_alpha``     a learned mixture (1 - sigmoid(a)) q k^T / sqrt(d_k) + sigmoid(a) B, a = 0 at init.

A synthesiser that uses no keys has no W_k (and ``random``/``factorized`` no W_q): parameters no
output depends on would never train. That is why ``dense`` and ``random`` count fewer parameters
here than in Narang et al.'s Table 1 (whose implementation kept the unused projections).
A causal decoder masks the synthesised logits above the diagonal like dot-product ones, so
position i is never told about later positions; a random matrix, which ignores the input, cannot
carry them either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.attention import AttentionBase, MultiHeadAttention, additive_mask

_TAY = "Tay et al. 2020, arXiv 2005.00743"
#: rank of the factorized random synthesiser (Mesh TensorFlow's ``factorized_dim``)
FACTORIZED_RANK = 16
#: mode -> (synthesiser kind, mixed with dot-product logits, learned mixing weight)
MODES: dict[str, tuple[str, bool, bool]] = {
    "dense": ("dense", False, False), "dense_plus": ("dense", True, False),
    "dense_plus_alpha": ("dense", True, True), "factorized": ("factorized", False, False),
    "random": ("random", False, False), "random_plus": ("random", True, False),
    "random_plus_alpha": ("random", True, True),
}


class SynthesizerAttention(AttentionBase):
    """Self-attention whose logits are synthesised (see the module docstring); ``mode`` in :data:`MODES`."""

    mode = "dense"

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        kind, self.plus, alpha = MODES[self.mode]
        self.kind = kind
        self.uses_q = self.plus or kind == "dense"
        self.uses_k = self.plus
        inner = self.n_heads * self.d_head
        parts = (inner if self.uses_q else 0, inner if self.uses_k else 0, inner)
        self.split = parts
        self.qkv = nn.Linear(spec.d_model, sum(parts), bias=spec.bias)
        length = spec.max_len
        if kind == "dense":
            self.synth = nn.Linear(self.d_head, length, bias=False)
        elif kind == "random":
            self.random = nn.Parameter(torch.empty(self.n_heads, length, length))
        else:
            self.r1 = nn.Parameter(torch.empty(self.n_heads, length, FACTORIZED_RANK))
            self.r2 = nn.Parameter(torch.empty(self.n_heads, length, FACTORIZED_RANK))
        self.alpha = nn.Parameter(torch.zeros(())) if alpha else None
        self.reset_special()

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        """Random logits start at unit scale (N(0, 1)); factors at N(0, 1/sqrt(k)) so R1 R2^T does too."""
        if self.kind == "random":
            self.random.normal_(0.0, 1.0)
        elif self.kind == "factorized":
            for r in (self.r1, self.r2):
                r.normal_(0.0, FACTORIZED_RANK ** -0.25)

    def branch_weights(self) -> dict[str, list[Tensor]]:
        q, k, v = self.qkv.weight.detach().split(self.split, dim=0)
        score = [w for w, used in ((q, self.uses_q), (k, self.uses_k)) if used]
        if self.kind == "dense":
            score.append(self.synth.weight.detach())
        return {"score": score, "input": [v], "output": [self.out.weight.detach()]}

    def synthesised(self, q: Tensor | None, t: int, s: int) -> Tensor:
        """The synthesised logits [B|1, H, T, S] (queries q [B, H, T, d_k] for ``dense``)."""
        if self.kind == "dense":
            assert q is not None
            return self.synth(F.relu(q))[..., :s]
        if self.kind == "random":
            return self.random[None, :, :t, :s]
        return (self.r1[:, :t] @ self.r2[:, :s].transpose(-1, -2))[None]

    def logits(self, x: Tensor, position: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Attention logits [B|1, H, T, T] of the stack's input x, and the values [B, H, T, d]
        (a rotating position rotates q and k of the dot-product part)."""
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        t = x.shape[1]
        qh = self.heads(q) if self.uses_q else None
        synth = self.synthesised(qh, t, t)
        if not self.plus:
            return synth, self.heads(v)
        assert qh is not None
        kh = self.heads(k)
        if position is not None and position.rotates:
            qh, kh = position.rotate(qh, kh)
        dot = (qh @ kh.transpose(-1, -2)) * self.scale
        if self.alpha is None:
            return dot + synth, self.heads(v)
        mix = torch.sigmoid(self.alpha)
        return (1 - mix) * dot + mix * synth, self.heads(v)

    def weights(self, x: Tensor, pad_mask: Tensor | None = None, bias: Tensor | None = None,
                position: nn.Module | None = None) -> Tensor:
        """Attention weights [B|1, H, T, T] (before dropout)."""
        logits, _ = self.logits(x, position)
        t = x.shape[1]
        mask = additive_mask(t, t, causal=self.causal, pad_mask=pad_mask, bias=bias, device=x.device,
                             dtype=torch.float32)
        return torch.softmax(logits.float() + mask, dim=-1)

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        logits, v = self.logits(x, position)
        t = x.shape[1]
        mask = additive_mask(t, t, causal=self.causal, pad_mask=pad_mask, bias=bias, device=x.device,
                             dtype=torch.float32)
        weights = torch.softmax(logits.float() + mask, dim=-1).to(v.dtype)
        drop = self.dropout if self.training else 0.0
        out = F.dropout(weights, drop, training=drop > 0) @ v
        b = x.shape[0]
        return self.out(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head))


def _synthesizer_factory(mode: str) -> type:
    """The attention component of one mode: synthesised self-attention, dot-product cross-attention."""
    synth = type(f"Synthesizer_{mode}", (SynthesizerAttention,), {"mode": mode, "__doc__": f"Synthesizer ({mode})."})

    def build(spec: ModelSpec, causal: bool = False, cross: bool = False) -> nn.Module:
        return MultiHeadAttention(spec, causal, cross) if cross else synth(spec, causal, cross)

    build.__name__ = build.__qualname__ = f"synthesizer_{mode}"
    build.__doc__ = f"Synthesizer ({mode}) self-attention (Tay et al. 2020); dot-product cross-attention."
    build.honours_bias = True  # type: ignore[attr-defined]
    register_component("attention", f"synthesizer_{mode}", paper=_TAY)(build)
    return synth


SYNTHESIZERS: dict[str, type] = {mode: _synthesizer_factory(mode) for mode in MODES}


def synthesizer_params(spec: ModelSpec, mode: str) -> int:
    """Parameters of one synthesised self-attention layer, by hand (biases off)."""
    kind, plus, alpha = MODES[mode]
    d, inner, h, length = spec.d_model, spec.n_heads * spec.head_dim, spec.n_heads, spec.max_len
    projections = d * inner * (1 + (plus or kind == "dense") + plus) + inner * d  # W_q?, W_k?, W_v, W_o
    own = {"dense": spec.head_dim * length, "random": h * length * length,
           "factorized": 2 * h * length * FACTORIZED_RANK}[kind]
    return projections + own + int(alpha)


for _mode in MODES:
    selector(f"synthesizer_{_mode}", slot="attention", paper=_TAY, attention=f"synthesizer_{_mode}",
             description=f"Synthesizer ({_mode.replace('_', ' ')}): self-attention logits synthesised, not q.k "
                         "(Tay et al. 2020).")

__all__ = ["FACTORIZED_RANK", "MODES", "SYNTHESIZERS", "SynthesizerAttention", "synthesizer_params"]
