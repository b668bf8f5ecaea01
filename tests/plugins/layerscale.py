"""LayerScale (Touvron et al. 2021, CaiT, arXiv 2103.17239): x + diag(lambda) F(norm(x)).

An example of :class:`modtransfer.ResidualBase` (only ``combine`` is new) and of a variant
with a parameter kept in ``ModelSpec.extra`` under its own key (``layerscale_init``), so it
composes with other variants that keep options there, e.g. ``switch(capacity_factor=1.25)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modtransfer import ModelSpec, ResidualBase, register_component, register_variant

DEFAULT_INIT = 0.1


@register_component("residual", "layerscale", paper="Touvron et al. 2021, arXiv 2103.17239")
class LayerScale(ResidualBase):
    """Pre-norm residual whose branch is scaled per channel by lambda, initialised small."""

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm, index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__(spec, sublayer, norm, index, n_sublayers)
        self.init = float(spec.option("layerscale_init", DEFAULT_INIT))
        self.scale = nn.Parameter(torch.full((spec.d_model,), self.init))

    def combine(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + self.scale * branch

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        """lambda back to its initial value after the model's init scheme."""
        self.scale.fill_(self.init)


@register_variant("layerscale", slot="residual", paper="Touvron et al. 2021, arXiv 2103.17239")
def layerscale(spec: ModelSpec, init: float = DEFAULT_INIT) -> ModelSpec:
    """LayerScale: each residual branch scaled by a learned per-channel lambda (init ``init``)."""
    return spec.replace(residual="layerscale").with_options(layerscale_init=float(init))
