"""A plugin registering a variant under a built-in name (gelu) without override=True: an error."""

from __future__ import annotations

from modtransfer import ModelSpec, register_variant


@register_variant("gelu", slot="activation")
def my_gelu(spec: ModelSpec) -> ModelSpec:
    """Not the built-in gelu."""
    return spec.replace(activation="swish")
