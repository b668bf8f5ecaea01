"""A plugin whose FFN works on real tensors but not on the ``meta`` device.

It reads a value back from its input (``.item()``), which a meta tensor does not have, so the
parameter and FLOP counting that ``run`` does on meta before training fails: ``check`` must
fail it too (check ``meta``).
"""

from __future__ import annotations

from torch import Tensor

from modtransfer import ModelSpec, register_component, register_variant
from modtransfer.variants.baseline.ffn import DenseFFN


@register_component("ffn", "data_dependent")
class DataDependentFFN(DenseFFN):
    """A dense FFN that clips its input at a bound read from the data (a host round trip)."""

    def forward(self, x: Tensor) -> Tensor:
        bound = float(x.abs().max().item())
        return super().forward(x.clamp(-bound, bound))


@register_variant("meta_fail", slot="ffn")
def meta_fail(spec: ModelSpec) -> ModelSpec:
    """A dense FFN that cannot run on the meta device."""
    return spec.replace(ffn="data_dependent")
