"""The Weighted Transformer (Ahmed et al. 2017, "Weighted Transformer Network for Machine
Translation", arXiv 1711.02132): branched attention in place of multi-head attention and the FFN.

Each of the M = n_heads heads is a branch (Ahmed et al. eq. 3-4):

    head_i     = Attention(x W_i^Q, m W_i^K, m W_i^V)
    headbar_i  = kappa_i * head_i W^{O_i}            W^{O_i}: [d_head, d_model], its own per head
    BranchedAttention(x, m) = sum_i alpha_i FFN_i(headbar_i)

with FFN_i each branch's own two-layer network and kappa, alpha learned weights on the simplex
(sum to one, non-negative); here each is the softmax of M free logits (zero at the start, so every
branch starts at weight 1/M). The per-head projections W^{O_i} together are the baseline's W_o,
laid out as head i's columns. A block is one branched self-attention sublayer (encoder), or a
branched self-attention and a branched encoder-decoder attention sublayer (decoder), each inside
the spec's residual scheme; the FFN lives inside the branches, so the block has no FFN sublayer.
This is the layout the table's 280M implies for the model Narang et al. 2021 ran (Mesh TensorFlow's
``BranchedSelfAttention`` and ``BranchedEncDecAttention`` with no FFN layer beside them; their
configuration file is not public, so the layout is inferred from the count).

Branch width: FFN_i maps d_model -> d_ff / M -> d_model (``branch_ff`` overrides), so a branched
sublayer holds one attention's and one FFN's parameters. In Narang et al.'s Mesh TensorFlow model
the M branches share one full-width FFN instead (the same parameters, M times the FLOPs: the
table's 71T operations); the paper's FFN_i are per branch, as here. The FFNs use the spec's
activation; ``spec.ffn`` must be the dense FFN (a gated or expert FFN has no branched form here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from modtransfer.core.components import component, register_component
from modtransfer.core.draws import Draws
from modtransfer.core.errors import UserError
from modtransfer.core.model import BLOCKS
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.attention import AttentionBase
from modtransfer.variants.baseline.ffn import DenseFFN

_AHMED = "Ahmed et al. 2017, arXiv 1711.02132"


def branch_width(spec: ModelSpec) -> int:
    """The inner width of each branch's FFN: ``branch_ff``, or d_ff / n_heads (at least 1)."""
    return int(spec.option("branch_ff", 0)) or max(1, spec.d_ff // spec.n_heads)


@register_component("attention", "branched", paper=_AHMED)
class BranchedAttention(AttentionBase):
    """sum_i alpha_i FFN_i(kappa_i head_i W^{O_i}): one branch per head, each with its own FFN."""

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False,
                 activation: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(spec, causal, cross)
        act = activation or component("activation", spec.activation)
        branch_spec = spec.replace(d_ff=branch_width(spec))
        self.branches = nn.ModuleList(DenseFFN(branch_spec, act) for _ in range(self.n_heads))
        self.kappa_logits = nn.Parameter(torch.zeros(self.n_heads))
        self.alpha_logits = nn.Parameter(torch.zeros(self.n_heads))

    def kappa(self) -> Tensor:
        """The concatenation weights kappa [M] (on the simplex)."""
        return torch.softmax(self.kappa_logits.float(), dim=0).to(self.kappa_logits.dtype)

    def alpha(self) -> Tensor:
        """The addition weights alpha [M] (on the simplex)."""
        return torch.softmax(self.alpha_logits.float(), dim=0).to(self.alpha_logits.dtype)

    def head_outputs(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                     bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        """head_i W^{O_i} for every head [B, M, T, d_model] (W_o's bias, if any, on each)."""
        q, k, v = self.project(x, kv)
        if position is not None and position.rotates and not self.cross:
            q, k = position.rotate(q, k)
        heads = self.attend(q, k, v, pad_mask=pad_mask, bias=None if self.cross else bias)
        w = self.out.weight.view(self.out.weight.shape[0], self.n_heads, self.d_head)
        out = torch.einsum("bhtk,dhk->bhtd", heads, w)
        return out if self.out.bias is None else out + self.out.bias

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        heads = self.head_outputs(x, kv, pad_mask=pad_mask, bias=bias, position=position)
        kappa, alpha = self.kappa().to(heads.dtype), self.alpha().to(heads.dtype)
        out = torch.zeros_like(x)
        for i, branch in enumerate(self.branches):
            out = out + alpha[i] * branch(kappa[i] * heads[:, i])
        return out

    def branch_weights(self) -> dict[str, list[Tensor]]:
        roles = super().branch_weights()
        roles["input"] += [self.out.weight.detach()] + [b.w1.weight.detach() for b in self.branches]
        roles["output"] = [b.w2.weight.detach() for b in self.branches]
        return roles

    def output_layers(self) -> list[nn.Module]:
        """The layers that compute the branch outputs (each FFN_i's second layer)."""
        return [b.w2 for b in self.branches]


class WeightedBlock(nn.Module):
    """A Weighted Transformer layer: branched self-attention (and branched cross-attention)."""

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, index: int, draws: Draws | None = None,
                 place: str = "") -> None:
        super().__init__()
        if spec.ffn != "dense":
            raise UserError(f"weighted_transformer: the branches' FFNs are dense; ffn {spec.ffn!r} cannot be "
                            "combined with it (drop the FFN variant)")
        draws = draws or Draws(None)
        residual, norm = component("residual", spec.residual), component("norm", spec.norm)
        attention, activation = component("attention", spec.attention), component("activation", spec.activation)
        per_block = 2 if cross else 1
        total, first = spec.n_layers * per_block, index * per_block
        draws.at(f"{place}.attn")
        self.attn = residual(spec, attention(spec, causal, False, activation), norm, first, total)
        draws.at(f"{place}.cross")
        self.cross = residual(spec, attention(spec, False, True, activation), norm, first + 1, total) if cross else None

    def forward(self, x: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None, position: nn.Module,
                memory: Tensor | None, memory_pad_mask: Tensor | None) -> Tensor:
        x = self.attn(x, pad_mask=pad_mask, bias=bias, position=position)
        if self.cross is not None:
            x = self.cross(x, kv=memory, pad_mask=memory_pad_mask)
        return x


BLOCKS.register("weighted", WeightedBlock)


@register_variant("weighted_transformer", slot="attention", paper=_AHMED)
def weighted_transformer(spec: ModelSpec, branch_ff: int = 0) -> ModelSpec:
    """Weighted Transformer: one branch per head, each with its own FFN, mixed by learned kappa and alpha."""
    if isinstance(branch_ff, bool) or not isinstance(branch_ff, int) or branch_ff < 0:
        raise UserError(f"weighted_transformer: branch_ff must be a positive integer (0: d_ff / n_heads), got {branch_ff!r}")
    out = spec.replace(attention="branched").with_options(block="weighted")
    return out.with_options(branch_ff=branch_ff) if branch_ff else out


def branched_params(spec: ModelSpec) -> int:
    """Parameters of one branched attention sublayer, by hand (biases off): Q, K, V and the W^{O_i}
    (4 d^2), M branch FFNs of width w (2 d w each), kappa and alpha (M each)."""
    d, m, w = spec.d_model, spec.n_heads, branch_width(spec)
    return 4 * d * d + m * 2 * d * w + 2 * m
