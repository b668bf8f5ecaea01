"""Modifications across the layers of a stack, from today's small-model speed records.

They read and leave values in the stack's shared state (:mod:`modtransfer.core.stack_shared`):

value_residual (Zhou et al. 2024, "Value Residual Learning For Alleviating Attention
Concentration In Transformers", ResFormer, arXiv 2410.17897): every self-attention after the
first uses a learned mix of its own values and the first layer's, V_n <- l1 V_n + l2 V_1.
value_embeddings (the modded-nanogpt record history): a second token embedding, looked up from
the stack's input tokens and mixed into every self-attention's values, V_n <- l1 V_n + l2 E_v[x].
unet_skips (the modded-nanogpt records; Ronneberger et al. 2015, U-Net, arXiv 1505.04597): the
output of block i of the first half is added, with a learned weight, to the input of its mirror
block L-1-i of the second half.

Value residuals and U-net skips need distinct blocks: a stack that shares one block (ALBERT-style
``sharing``) is rejected with the reason, since its single block would be both the first layer
and every later one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modtransfer.core.components import component, register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.stack_shared import StackShared, building_stack
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.attention import MultiHeadAttention
from modtransfer.variants.baseline.residual import NormFactory, ResidualBase


def stack_of(what: str, spec: ModelSpec, *, distinct: bool) -> StackShared | None:
    """The shared state of the stack being built; with ``distinct``, reject a stack of one shared block."""
    shared = building_stack()
    if distinct and shared is not None and component("sharing", spec.sharing)(shared.name):
        raise UserError(f"{what} needs distinct blocks, but sharing {spec.sharing!r} reuses one block in the "
                        f"{shared.name}; drop one of the two variants")
    return shared


class _MixedValues(MultiHeadAttention):
    """Self-attention whose values are l1 V + l2 U, U from the stack's shared state (:meth:`other`);
    ``l1``, ``l2`` learned scalars, init 0.5 each. Cross-attention is the baseline's."""

    key = ""

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        self.shared = None if cross else stack_of(self.key, spec, distinct=self.key == "value_residual")
        self.layer = self.shared.join(self.key) if self.shared is not None else -1
        if self.mixes:
            self.lambdas = nn.Parameter(torch.full((2,), 0.5))

    @property
    def mixes(self) -> bool:
        return self.shared is not None

    def other(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        """The base's forward with the values mixed between projection and attention (``project``
        stays free of side effects: diagnostics call it on part of a batch)."""
        q, k, v = self.project(x, kv)
        if self.shared is not None:
            u = self.other(v)
            if self.mixes:
                v = self.lambdas[0] * v + self.lambdas[1] * u
        if position is not None and position.rotates and not self.cross:
            q, k = position.rotate(q, k)
        out = self.attend(q, k, v, pad_mask=pad_mask, bias=None if self.cross else bias)
        b, _, n, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        if self.mixes:
            self.lambdas.fill_(0.5)


@register_component("attention", "value_residual", paper="Zhou et al. 2024, arXiv 2410.17897")
class ValueResidualAttention(_MixedValues):
    """V_n <- l1 V_n + l2 V_1 for every self-attention n after the stack's first, which keeps its
    own V_1 (and stores it). Adds 2 parameters per self-attention after the first."""

    key = "value_residual"

    @property
    def mixes(self) -> bool:
        return self.shared is not None and self.layer > 0

    def other(self, v: Tensor) -> Tensor:
        assert self.shared is not None
        if self.layer == 0:
            self.shared.scratch["v1"] = v
            return v
        return self.shared.scratch["v1"]


@register_component("attention", "value_embedding", paper="modded-nanogpt records (value embeddings)")
class ValueEmbeddingAttention(_MixedValues):
    """V_n <- l1 V_n + l2 E_v[tokens] in every self-attention; E_v [vocab, H d_k] ~ N(0, 1) belongs
    to the stack's first self-attention (one table per stack), looked up once per forward.
    Adds vocab H d_k parameters per stack and 2 per self-attention."""

    key = "value_embedding"

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__(spec, causal, cross)
        if spec.vocab_size < 1:
            raise UserError("value_embeddings look up token ids; use them on tasks with a vocabulary")
        if self.layer == 0:
            self.table = nn.Parameter(torch.randn(spec.vocab_size, self.kv_heads * self.d_head))

    def other(self, v: Tensor) -> Tensor:
        assert self.shared is not None
        if "ve" not in self.shared.scratch:
            tokens = self.shared.tokens
            if tokens is None or self.layer != 0:
                raise RuntimeError("value embeddings need the stack's token ids, looked up by its first layer")
            self.shared.scratch["ve"] = self.heads(self.table[tokens], self.kv_heads)
        return self.shared.scratch["ve"]


@register_component("residual", "unet", paper="Ronneberger et al. 2015, arXiv 1505.04597; modded-nanogpt records")
class UNetSkip(ResidualBase):
    """Pre-norm, plus U-net skips: block i < L/2 leaves its output; its mirror L-1-i adds w_i times
    it to its input (w_i learned, init 1). Only the first branch of a receiving block holds a
    weight: L // 2 parameters per stack."""

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__(spec, sublayer, norm, index, n_sublayers)
        self.shared = stack_of("unet_skips", spec, distinct=True)
        per_block = max(1, n_sublayers // spec.n_layers)
        block, part = divmod(index, per_block)
        layers, half = spec.n_layers, spec.n_layers // 2
        self.leaves = f"skip{block}" if part == per_block - 1 and block < half else None
        self.takes = f"skip{layers - 1 - block}" if part == 0 and block >= layers - half else None
        if self.takes is not None and self.shared is not None:
            self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        if self.shared is not None and self.takes is not None:
            x = x + self.weight * self.shared.scratch[self.takes]
        out = x + self.branch(x, **kw)
        if self.shared is not None and self.leaves is not None:
            self.shared.scratch[self.leaves] = out
        return out

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        if hasattr(self, "weight"):
            self.weight.fill_(1.0)


# -- variants -----------------------------------------------------------------------------------
selector("value_residual", slot="attention", paper="Zhou et al. 2024, arXiv 2410.17897", attention="value_residual",
         description="Every later self-attention mixes the first layer's values into its own (learned l1, l2).")
selector("value_embeddings", slot="attention", paper="modded-nanogpt records (value embeddings)", requires=("vocab",),
         attention="value_embedding",
         description="A second token embedding per stack mixed into every self-attention's values.")
selector("unet_skips", slot="residual", paper="modded-nanogpt records; Ronneberger et al. 2015, arXiv 1505.04597",
         residual="unet",
         description="Block i's output added (learned weight) to the input of its mirror block L-1-i.")
