"""Stacks that run their blocks differently: the Universal Transformer and the Funnel Transformer.

Both are :class:`~modtransfer.core.model.Stack` subclasses, registered in
:data:`~modtransfer.core.model.STACKS` and selected with the spec option ``stack``.

universal (Dehghani et al. 2019, "Universal Transformers", ICLR, arXiv 1807.03819): each stack
holds one block (``sharing="all"``) applied up to ``n_layers`` times. Before every step a
sinusoidal signal of the step t is added (the paper's timestep half of its coordinate embedding;
the position half is the stack's position component, added once). Adaptive computation time
(Graves 2016, arXiv 1603.08983, as the paper's section 2.2) decides per position when to stop:
a halting unit p_t = sigmoid(w . h_t + b) accumulates until it would pass 1 - eps; the output is
sum_t w_t h_t with w_t = p_t before halting and the remainder R = 1 - sum p at the halting step.
Every step runs on every position (no early exit), and a halted position's state is frozen, so
the result equals the paper's loop and a position's halting depends only on its own state (a
causal decoder stays causal). The ponder cost mean(N + R) over real positions is the stack's
``aux_loss``, weighted by ``aux_loss_weight``.

funnel (Dai et al. 2020, "Funnel-Transformer", NeurIPS, arXiv 2006.03236): the encoder's layers
form up to three groups (Funnel B4-4-4 at 12 layers); after each group but the last the
sequence is mean-pooled with stride 2 (a pooled position averages its real members only and is
padding when all are), so later groups attend over half as many positions. The encoder then
restores the full length for the decoder (its "decoder" in Dai et al. section 2.2): the last
group's states are repeated back to every position and added to the first group's output. The
paper's pool-query-only attention and its two extra up-sampled layers are left out (a plain
pooled group; no parameters beyond the baseline's, as Table 1's 223M); position biases and
rotations are recomputed on the pooled grid. A decoder's stack cannot pool (position i would
read later positions), so the decoder runs unchanged and the variant needs an encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.model import STACKS, Stack
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector

_DEHGHANI = "Dehghani et al. 2019, arXiv 1807.03819"
_DAI = "Dai et al. 2020, arXiv 2006.03236"
HALT_EPS = 0.01


def timestep_signal(step: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The sinusoidal encoding of one step [dim] (Vaswani et al.'s position formula at ``step``)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    angle = step * freq
    out = torch.cat([angle.sin(), angle.cos(), angle.new_zeros(dim - 2 * half)])
    return out.to(dtype)


class UniversalStack(Stack):
    """One shared block applied up to ``n_layers`` times, with a step signal and ACT halting."""

    def __init__(self, spec: ModelSpec, **kw: object) -> None:
        super().__init__(spec, **kw)  # type: ignore[arg-type]
        self.halt = nn.Linear(spec.d_model, 1)
        nn.init.constant_(self.halt.bias, 1.0)   # start by pondering a few steps (Graves 2016, section 3)
        self.aux_loss: Tensor | None = None

    def forward(self, x: Tensor, pad_mask: Tensor | None = None, memory: Tensor | None = None,
                memory_pad_mask: Tensor | None = None) -> Tensor:
        x = self.drop(self.position.embed(x))
        n = x.shape[1]
        bias = self.position.bias(n, n, x.device, x.dtype)
        steps = self.repeat * len(self.blocks)
        acc = x.new_zeros(x.shape[:2])          # sum of halting probabilities so far
        remainder = x.new_zeros(x.shape[:2])
        updates = x.new_zeros(x.shape[:2])
        out = torch.zeros_like(x)
        for t in range(steps):
            block = self.blocks[t % len(self.blocks)]
            x = x + timestep_signal(t, x.shape[-1], x.device, x.dtype)
            p = torch.sigmoid(self.halt(x).squeeze(-1).float()).to(x.dtype)
            running = (acc < 1.0 - HALT_EPS).to(x.dtype)
            last = t == steps - 1
            halts = running if last else ((acc + p * running) > 1.0 - HALT_EPS).to(x.dtype) * running
            keeps = running - halts
            acc = acc + p * keeps
            remainder = remainder + halts * (1.0 - acc)
            weight = p * keeps + halts * (1.0 - acc)
            acc = acc + halts * (1.0 - acc)
            updates = updates + running
            x = block(x, pad_mask=pad_mask, bias=bias, position=self.position, memory=memory,
                      memory_pad_mask=memory_pad_mask)
            out = out + weight[..., None] * x
        real = (~pad_mask).to(x.dtype) if pad_mask is not None else torch.ones_like(acc)
        self.aux_loss = ((updates + remainder) * real).sum() / real.sum().clamp(min=1.0)
        return self.final_drop(self.final_norm(out))


def groups(n_layers: int) -> list[int]:
    """Layers per Funnel group: up to three, as even as possible (12 -> 4, 4, 4; 2 -> 1, 1)."""
    n = min(3, n_layers)
    return [n_layers // n + (1 if i < n_layers % n else 0) for i in range(n)]


def pool(x: Tensor, pad_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Stride-2 mean pooling of [B, T, D] over real positions; the pooled padding mask."""
    if x.shape[1] % 2:
        x = F.pad(x, (0, 0, 0, 1))
        pad_mask = F.pad(pad_mask, (0, 1), value=True) if pad_mask is not None else None
        if pad_mask is None:  # the added position is padding too
            pad_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            pad_mask[:, -1] = True
    b, t, d = x.shape
    real = (~pad_mask).to(x.dtype) if pad_mask is not None else x.new_ones(b, t)
    pairs = (x * real[..., None]).view(b, t // 2, 2, d).sum(2)
    count = real.view(b, t // 2, 2).sum(2)
    pooled = pairs / count.clamp(min=1.0)[..., None]
    return pooled, (count == 0) if pad_mask is not None else None


class FunnelStack(Stack):
    """An encoder that pools the sequence between groups of blocks and restores it at the end."""

    def __init__(self, spec: ModelSpec, *, causal: bool, **kw: object) -> None:
        super().__init__(spec, causal=causal, **kw)  # type: ignore[arg-type]
        self.pools = not causal  # a decoder cannot pool without reading later positions

    def forward(self, x: Tensor, pad_mask: Tensor | None = None, memory: Tensor | None = None,
                memory_pad_mask: Tensor | None = None) -> Tensor:
        if not self.pools:
            return super().forward(x, pad_mask, memory, memory_pad_mask)
        x = self.drop(self.position.embed(x))
        length = x.shape[1]
        blocks = [b for _ in range(self.repeat) for b in self.blocks]
        mask, first, start = pad_mask, x, 0
        sizes = groups(len(blocks))
        for g, size in enumerate(sizes):
            if g:
                x, mask = pool(x, mask)
            n = x.shape[1]
            bias = self.position.bias(n, n, x.device, x.dtype)
            for block in blocks[start:start + size]:
                x = block(x, pad_mask=mask, bias=bias, position=self.position, memory=None, memory_pad_mask=None)
            start += size
            if g == 0:
                first = x
        if len(sizes) > 1:  # back to every position, plus the full-length states of the first group
            x = x.repeat_interleave(2 ** (len(sizes) - 1), dim=1)[:, :length] + first
        return self.final_drop(self.final_norm(x))


STACKS.register("universal", UniversalStack)
STACKS.register("funnel", FunnelStack)


selector("universal_transformer", slot="sharing", paper=_DEHGHANI, sharing="all", options={"stack": "universal"},
         description="Universal Transformer: one shared block per stack, looped with a step signal and ACT halting.")
selector("funnel", slot="shape", paper=_DAI, requires_any=("encoder", "encoder_decoder"), options={"stack": "funnel"},
         description="Funnel Transformer: the encoder pools the sequence between groups of layers, then restores it.")
