"""A plugin whose FFN raises KeyboardInterrupt after a few training steps.

It stands in for a user pressing Ctrl-C in the middle of a cell: the cell must leave no row,
and the cells finished before it must be kept.
"""

from __future__ import annotations

from modtransfer import ModelSpec, register_component, register_variant
from modtransfer.variants.baseline.ffn import DenseFFN


@register_component("ffn", "interrupting")
class InterruptingFFN(DenseFFN):
    """A dense FFN that interrupts the process on its 5th training forward."""

    def __init__(self, spec: ModelSpec, activation, layer_index: int = 0) -> None:
        super().__init__(spec, activation, layer_index)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 5:
                raise KeyboardInterrupt
        return super().forward(x)


@register_variant("interrupting", slot="ffn")
def interrupting(spec: ModelSpec) -> ModelSpec:
    """Interrupts training on the 5th step (tests only)."""
    return spec.replace(ffn="interrupting")
