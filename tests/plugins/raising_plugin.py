"""A plugin whose variant builds fine but raises inside the model's forward while training.

The runner must record such a cell as ``failed`` with the traceback in ``error`` and go on
with the other cells. The FFN computes normally on the ``meta`` device (where the harness
counts parameters and FLOPs before training), so the failure happens at the first real
training step, as a bug in a research variant would.

Other tests rely on the names: component ``ffn/raise_in_forward``, variant ``raise_in_forward``
and the message :data:`MESSAGE`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from modtransfer import ModelSpec, register_component, register_variant

MESSAGE = "raising_plugin: deliberate failure inside forward"


@register_component("ffn", "raise_in_forward")
class RaisingFFN(nn.Module):
    """A dense FFN that raises :class:`RuntimeError` on any real (non-meta) tensor."""

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.w1 = nn.Linear(spec.d_model, spec.d_ff)
        self.w2 = nn.Linear(spec.d_ff, spec.d_model)
        self.act = activation

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_meta:
            raise RuntimeError(MESSAGE)
        return self.w2(self.act(self.w1(x)))


@register_variant("raise_in_forward", slot="ffn")
def raise_in_forward(spec: ModelSpec) -> ModelSpec:
    """An FFN that fails at the first training step (tests the runner's failure path)."""
    return spec.replace(ffn="raise_in_forward")
