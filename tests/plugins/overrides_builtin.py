"""A plugin that replaces the built-in variant ``elu`` on purpose (``override=True``)."""

from __future__ import annotations

from modtransfer import ModelSpec, register_variant


@register_variant("elu", slot="activation", override=True)
def elu_as_swish(spec: ModelSpec) -> ModelSpec:
    """ELU replaced by swish, to show that the override took effect."""
    return spec.replace(activation="swish")
