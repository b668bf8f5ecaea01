"""The Evolved Transformer (So et al. 2019, "The Evolved Transformer", ICML, arXiv 1901.11117):
the encoder and decoder cells found by architecture search replace the standard blocks.

Encoder cell (So et al. figure 3, left), four residual sublayers:
1. gated linear unit: (h W_a) * sigmoid(h W_b), both d -> d;
2. two branches: relu(h W, d -> 4d) and relu(conv 3x1, d -> d/2, zero-padded to 4d), added, a norm
   over 4d, then a separable conv 9x1 (4d -> d/2, zero-padded to d);
3. self-attention (n_heads heads);
4. FFN d -> d_ff -> d with ReLU.
Decoder cell (figure 3, right), five residual sublayers (three without an encoder):
1. two branches: self-attention with 2 n_heads heads and attention to the encoder (n_heads), added;
2. two branches: relu(separable conv 11x1, d -> 2d) and separable conv 7x1 (d -> d/2, zero-padded
   to 2d), added, a norm over 2d, then a separable conv 7x1 (2d -> d);
3. self-attention; 4. attention to the encoder; 5. FFN d -> d_ff -> d with swish.
"h" is the sublayer's input after the spec's residual scheme (pre-norm: its norm), so each
sublayer is wrapped exactly like a standard block's. A separable convolution is a depthwise
convolution (one k-tap filter per channel, no bias) then a pointwise d_in -> d_out projection.
Encoder convolutions are centred; decoder ones see positions i-k+1..i only. Padded positions are
zeroed before every convolution, so they never reach a real position. The sizes are those of
Mesh TensorFlow's ``evolved_transformer`` layers, the model Narang et al. 2021 ran.

A cell holds about two standard blocks' sublayers, so the variant builds n_layers / 2 cells per
stack (Narang et al. do not give their cell count; at their shape this is 202M against the
table's 217M, the gap written down in ``tests/test_zoo_table1.py``). The 2 n_heads
head branch has half the head width, so a position component that rotates or biases heads
(rope, relative_bias, alibi) cannot be combined with it; additive positions can. The cells' FFNs
and activations are the paper's (ReLU in the encoder, swish in the decoder): an FFN variant is
refused, and ``spec.activation`` is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import component
from modtransfer.core.draws import Draws
from modtransfer.core.errors import UserError
from modtransfer.core.model import BLOCKS
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.ffn import DenseFFN

_SO = "So et al. 2019, arXiv 1901.11117"


class SeqConv(nn.Module):
    """A 1-D convolution over the sequence [B, T, C_in] -> [B, T, C_out]; padded positions zeroed first.

    ``separable``: depthwise (k taps per channel, no bias) then pointwise C_in -> C_out; otherwise a
    dense convolution. ``causal``: output i reads inputs i-k+1..i; otherwise i-(k-1)//2..i+k//2.
    """

    def __init__(self, c_in: int, c_out: int, k: int, *, causal: bool, separable: bool, bias: bool) -> None:
        super().__init__()
        self.k, self.causal = k, causal
        if separable:
            self.depthwise = nn.Conv1d(c_in, c_in, k, groups=c_in, bias=False)
            self.pointwise = nn.Linear(c_in, c_out, bias=bias)
        else:
            self.dense = nn.Conv1d(c_in, c_out, k, bias=bias)

    def forward(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[..., None], 0.0)
        left = self.k - 1 if self.causal else (self.k - 1) // 2
        x = F.pad(x.transpose(1, 2), (left, self.k - 1 - left))
        if hasattr(self, "dense"):
            return self.dense(x).transpose(1, 2)
        return self.pointwise(self.depthwise(x).transpose(1, 2))


def pad_to(x: Tensor, width: int) -> Tensor:
    """Zero-pad the channels of ``x`` up to ``width`` (how a narrow branch joins a wide one)."""
    return F.pad(x, (0, width - x.shape[-1]))


class GatedLinearUnit(nn.Module):
    """(h W_a) * sigmoid(h W_b) (Dauphin et al. 2017, arXiv 1612.08083)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.proj = nn.Linear(spec.d_model, 2 * spec.d_model, bias=spec.bias)

    def forward(self, h: Tensor, **kw: object) -> Tensor:
        a, g = self.proj(h).chunk(2, dim=-1)
        return a * torch.sigmoid(g)


class EncoderConvBranches(nn.Module):
    """sepconv9x1(norm(relu(h W) + pad(relu(conv3x1(h))))), zero-padded to d."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d = spec.d_model
        self.left = nn.Linear(d, 4 * d, bias=spec.bias)
        self.right = SeqConv(d, d // 2, 3, causal=False, separable=False, bias=spec.bias)
        self.norm = component("norm", spec.norm)(4 * d, spec.norm_eps)
        self.out = SeqConv(4 * d, d // 2, 9, causal=False, separable=True, bias=spec.bias)
        self.drop = nn.Dropout(spec.dropout_for("ffn"))

    def forward(self, h: Tensor, *, pad_mask: Tensor | None = None, **kw: object) -> Tensor:
        left = self.drop(F.relu(self.left(h)))
        right = self.drop(F.relu(self.right(h, pad_mask)))
        mixed = self.norm(left + pad_to(right, left.shape[-1]))
        return pad_to(self.drop(self.out(mixed, pad_mask)), h.shape[-1])


class DecoderConvBranches(nn.Module):
    """sepconv7x1(norm(relu(sepconv11x1(h)) + pad(sepconv7x1(h)))), every convolution causal."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d = spec.d_model
        self.left = SeqConv(d, 2 * d, 11, causal=True, separable=True, bias=spec.bias)
        self.right = SeqConv(d, d // 2, 7, causal=True, separable=True, bias=spec.bias)
        self.norm = component("norm", spec.norm)(2 * d, spec.norm_eps)
        self.out = SeqConv(2 * d, d, 7, causal=True, separable=True, bias=spec.bias)
        self.drop = nn.Dropout(spec.dropout_for("ffn"))

    def forward(self, h: Tensor, *, pad_mask: Tensor | None = None, **kw: object) -> Tensor:
        left = self.drop(F.relu(self.left(h, pad_mask)))
        right = self.drop(self.right(h, pad_mask))
        return self.drop(self.out(self.norm(left + pad_to(right, left.shape[-1])), pad_mask))


class AttentionBranches(nn.Module):
    """Self-attention with 2 n_heads heads, plus attention to the encoder (n_heads) when there is one."""

    def __init__(self, spec: ModelSpec, cross: bool) -> None:
        super().__init__()
        attention = component("attention", spec.attention)
        self.left = attention(spec.replace(n_heads=2 * spec.n_heads, d_head=0), True, False)
        self.right = attention(spec, False, True) if cross else None

    def forward(self, h: Tensor, *, pad_mask: Tensor | None = None, memory: Tensor | None = None,
                memory_pad_mask: Tensor | None = None, **kw: object) -> Tensor:
        out = self.left(h, pad_mask=pad_mask)
        return out if self.right is None else out + self.right(h, kv=memory, pad_mask=memory_pad_mask)

    def output_layers(self) -> list[nn.Module]:
        return [m for part in (self.left, self.right) if part is not None for m in part.output_layers()]

    def branch_weights(self) -> dict[str, list[Tensor]]:
        roles: dict[str, list[Tensor]] = {"score": [], "input": [], "output": []}
        for part in (self.left, self.right):
            for role, weights in (part.branch_weights().items() if part is not None else ()):
                roles[role] += weights
        return roles


def _check_position(spec: ModelSpec) -> None:
    position = component("position", spec.position)
    if getattr(position, "adds_bias", False) or getattr(position, "rotates", False):
        raise UserError(f"evolved_transformer: its 2 x n_heads attention branch has other heads than position "
                        f"{spec.position!r} biases or rotates; combine it with sinusoidal, learned or no_position")


class EvolvedCell(nn.Module):
    """An Evolved Transformer encoder cell (``causal=False``) or decoder cell, each sublayer inside
    the spec's residual scheme."""

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, index: int, draws: Draws | None = None,
                 place: str = "") -> None:
        super().__init__()
        _check_position(spec)
        if spec.ffn != "dense":
            raise UserError(f"evolved_transformer: its cells have their own dense FFNs; ffn {spec.ffn!r} cannot be "
                            "combined with it (drop the FFN variant)")
        if spec.d_model % (2 * spec.n_heads) or spec.d_model % 2:
            raise UserError(f"evolved_transformer needs d_model divisible by 2 x n_heads; "
                            f"d_model={spec.d_model}, n_heads={spec.n_heads}")
        draws = draws or Draws(None)
        residual, norm = component("residual", spec.residual), component("norm", spec.norm)
        attention = component("attention", spec.attention)
        if causal:
            act = component("activation", "swish")
            parts: list[tuple[str, nn.Module]] = [("branches", AttentionBranches(spec, cross)),
                                                  ("conv", DecoderConvBranches(spec)),
                                                  ("attn", attention(spec, True, False))]
            if cross:
                parts.append(("cross", attention(spec, False, True)))
        else:
            act = component("activation", "relu")
            parts = [("glu", GatedLinearUnit(spec)), ("conv", EncoderConvBranches(spec)),
                     ("attn", attention(spec, False, False))]
        parts.append(("ffn", DenseFFN(spec, act)))
        total = spec.n_layers * len(parts)
        self.names = [name for name, _ in parts]
        self.parts = nn.ModuleDict()
        for i, (name, sub) in enumerate(parts):
            draws.at(f"{place}.{name}")
            self.parts[name] = residual(spec, sub, norm, index * len(parts) + i, total)

    def forward(self, x: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None, position: nn.Module,
                memory: Tensor | None, memory_pad_mask: Tensor | None) -> Tensor:
        kwargs: dict[str, dict[str, object]] = {
            "branches": {"pad_mask": pad_mask, "memory": memory, "memory_pad_mask": memory_pad_mask},
            "conv": {"pad_mask": pad_mask}, "attn": {"pad_mask": pad_mask, "bias": bias, "position": position},
            "cross": {"kv": memory, "pad_mask": memory_pad_mask},
        }
        for name in self.names:
            x = self.parts[name](x, **kwargs.get(name, {}))
        return x


BLOCKS.register("evolved", EvolvedCell)


@register_variant("evolved_transformer", slot="shape", paper=_SO)
def evolved_transformer(spec: ModelSpec) -> ModelSpec:
    """Evolved Transformer: the searched encoder and decoder cells, n_layers / 2 of them per stack."""
    _check_position(spec)  # here for a profile's position (t5's relative bias); the cell checks composed ones
    return spec.replace(n_layers=max(1, spec.n_layers // 2)).with_options(block="evolved")


def evolved_params(spec: ModelSpec, causal: bool, cross: bool) -> int:
    """Parameters of one cell, by hand, at the cell's spec (biases off; a norm of width w holds 2 w)."""
    d, ff = spec.d_model, spec.d_ff
    attention, ffn, norm = 4 * d * d, 2 * d * ff, 2 * d
    if not causal:
        conv = 4 * d * d + 3 * d * (d // 2) + 4 * norm + (9 * 4 * d + 4 * d * (d // 2))
        return 2 * d * d + conv + attention + ffn + 4 * norm
    conv = (11 * d + d * 2 * d) + (7 * d + d * (d // 2)) + 2 * norm + (7 * 2 * d + 2 * d * d)
    return (4 if cross else 2) * attention + conv + ffn + (5 if cross else 4) * norm
