"""A plugin that fails to import: the loader must report it by name and carry on."""

from __future__ import annotations

from modtransfer import ModelSpec, register_variant


@register_variant("broken_never_registered", slot="activation")
def never(spec: ModelSpec) -> ModelSpec:
    """Registered before the import fails (the loader should not leave it behind)."""
    return spec


raise RuntimeError("broken_plugin: this plugin fails at import on purpose")
