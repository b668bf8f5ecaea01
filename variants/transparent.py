"""Transparent attention (Bapna et al. 2018, "Training Deeper Neural Machine Translation Models
with Transparent Attention", EMNLP, arXiv 1808.07561).

Each decoder layer j attends to its own mixture of every encoder state instead of the encoder's
last output: s_j = sum_k softmax(W_j)_k h_k, with h_0 the encoder's input (embeddings plus
positions, after dropout), h_k the output of encoder layer k and W [M, K] (M decoder layers,
K = encoder layers + 1) learned scalars: one softmax per decoder layer (Bapna et al. eq. 4).
As in the model Narang et al. 2021 ran (Mesh TensorFlow's ``TransparentEncDecAttention``), the
intermediate states are taken as the stack passes them between layers and the last one after the
stack's final norm (the usual memory), and W starts from N(0, 1/K) (``reset_special``, so an
init scheme does not redraw it); Mesh TensorFlow's dropout on W is left out. One state per
encoder layer and one weight row per decoder layer, as there (its "module" is one layer).

The encoder's memory carries its K states (:class:`~modtransfer.core.layered.LayeredMemory`), so
``encode`` / ``decode`` keep their signatures. The variant needs an encoder-decoder task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modtransfer.core.layered import LayeredMemory, layers_of
from modtransfer.core.model import STACKS, Stack
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector

_BAPNA = "Bapna et al. 2018, arXiv 1808.07561"


class TransparentStack(Stack):
    """Encoder: returns its memory with every layer's state. Decoder: layer j reads mixture j."""

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, **kw: object) -> None:
        super().__init__(spec, causal=causal, cross=cross, **kw)  # type: ignore[arg-type]
        self.reads_layers = cross
        self.exposes_layers = not causal and kw.get("topology") == "encoder_decoder"
        if cross:  # K = the encoder's n_layers + 1 states (its layer count is the spec's, as this stack's)
            self.mix = nn.Parameter(torch.zeros(spec.n_layers, spec.n_layers + 1))
            self.reset_special()

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        if self.reads_layers:
            nn.init.normal_(self.mix, std=self.mix.shape[1] ** -0.5)

    def weights(self) -> Tensor:
        """softmax(W) [M, K]: row j is decoder layer j's weights over the encoder's K states."""
        return torch.softmax(self.mix.float(), dim=-1).to(self.mix.dtype)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None, memory: Tensor | None = None,
                memory_pad_mask: Tensor | None = None) -> Tensor:
        if not (self.reads_layers or self.exposes_layers):
            return super().forward(x, pad_mask, memory, memory_pad_mask)
        x = self.drop(self.position.embed(x))
        n = x.shape[1]
        bias = self.position.bias(n, n, x.device, x.dtype)
        blocks = [b for _ in range(self.repeat) for b in self.blocks]
        if self.reads_layers:
            layers = layers_of(memory)
            mixed = torch.einsum("mk,bskd->mbsd", self.weights().to(layers.dtype), layers)
            for j, block in enumerate(blocks):
                x = block(x, pad_mask=pad_mask, bias=bias, position=self.position, memory=mixed[j],
                          memory_pad_mask=memory_pad_mask)
            return self.final_drop(self.final_norm(x))
        states = [x]
        for block in blocks:
            x = block(x, pad_mask=pad_mask, bias=bias, position=self.position, memory=None, memory_pad_mask=None)
            states.append(x)
        out = self.final_drop(self.final_norm(x))
        states[-1] = out
        return LayeredMemory(out, torch.stack(states, dim=2))


STACKS.register("transparent", TransparentStack)


selector("transparent_attention", slot="attention", paper=_BAPNA, requires=("encoder_decoder",),
         options={"stack": "transparent"},
         description="Transparent attention: each decoder layer attends to its own learned mix of every encoder layer.")


def transparent_params(spec: ModelSpec) -> int:
    """Parameters transparent attention adds to an encoder-decoder, by hand: W [M, K]."""
    return spec.n_layers * (spec.n_layers + 1)
