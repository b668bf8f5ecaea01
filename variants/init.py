"""Initialisation schemes, applied once after the model is built.

default: PyTorch's own per-module initialisation (Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)))
and N(0, 1/d) embeddings.
"""

from __future__ import annotations

from torch import nn

from modtransfer.components import register_component
from modtransfer.spec import ModelSpec


@register_component("init", "default")
def init_default(model: nn.Module, spec: ModelSpec) -> None:
    """Keep each module's own initialisation."""
