"""The baseline's initialisation, ``default``: each module keeps the initialisation PyTorch gives it
(``nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), He et al. 2015, arXiv 1502.01852, with a = sqrt(5)),
embeddings their N(0, 1/d), then the modules' special inits
(:func:`modtransfer.core.model.apply_special_inits`). The other schemes, including the implementation
profiles' ``torch``, ``t5`` and ``gpt2``, are modifications, in :mod:`modtransfer.variants.init`.
"""

from __future__ import annotations

from torch import nn

from modtransfer.core.components import register_component
from modtransfer.core.model import apply_special_inits
from modtransfer.core.spec import ModelSpec


@register_component("init", "default")
def init_default(model: nn.Module, spec: ModelSpec) -> None:
    """Keep each module's own initialisation (special inits re-applied with the model's topology)."""
    apply_special_inits(model)
