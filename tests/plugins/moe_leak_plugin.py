"""A plugin whose mixture of experts leaks across positions, but only in training mode.

Its capacity is filled in batch-major order (every position of sequence 0, then sequence 1,
...), so whether a token of sequence 1 is dropped depends on the *later* tokens of sequence
0: in a decoder, future tokens change the past. Evaluation is dropless and looks causal, so
only ``check``'s train-mode causality pass catches it. (The built-in ``switch`` fills its
capacity time-major, which is causal.)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from modtransfer import ModelSpec, register_component, register_variant
from modtransfer.variants.baseline.ffn import DenseFFN
from modtransfer.variants.moe import MixtureOfExperts, is_moe_layer

CAPACITY = 0.5


class BatchMajorSwitch(MixtureOfExperts):
    """Top-1 routing over the batch flattened sequence by sequence (the bug under test)."""

    takes_pad_mask = False

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


@register_component("ffn", "batch_major_switch")
def batch_major_switch(spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> nn.Module:
    """Batch-major switch FFN in every ``moe_every``-th layer, the dense FFN elsewhere."""
    if not is_moe_layer(spec, layer_index):
        return DenseFFN(spec, activation, layer_index)
    return BatchMajorSwitch(spec, activation, top_k=1)


@register_variant("moe_batch_major", slot="ffn")
def moe_batch_major(spec: ModelSpec) -> ModelSpec:
    """A switch FFN with capacity filled batch-major (leaks future tokens in training)."""
    return spec.replace(ffn="batch_major_switch", n_experts=4, moe_top_k=1).with_options(capacity_factor=CAPACITY)
