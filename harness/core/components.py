"""The component registries, one per slot of :class:`~modtransfer.core.spec.ModelSpec`.

A component is a factory the builder calls for its slot (the interface of each slot is
documented in :mod:`modtransfer.core.model`, one ``Protocol`` per slot). Built-in components live in
``variants/`` next to the variants that select them; :func:`ensure_builtin_components` imports
them once. The package installs it as the registries' loader, so reading any registry
(``VARIANTS.names()``, ``COMPONENTS["ffn"].get(...)``) loads the built-ins first by itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from modtransfer.core.registry import Registry, loading_builtins
from modtransfer.core.spec import SLOTS

COMPONENTS: dict[str, Registry[Any]] = {slot: Registry(f"{slot} component") for slot in SLOTS}

_BUILTIN_MODULES = (
    "activations", "ffn", "norms", "residual", "position", "attention",
    "embeddings", "output", "sharing", "init", "depth", "moe",
)
_loaded = False


def register_component(slot: str, name: str, **meta: Any) -> Callable[[Any], Any]:
    """Decorator: register a component for ``slot`` under ``name``.

    >>> @register_component("activation", "squared_relu", paper="So et al. 2021")
    ... def squared_relu(x): ...
    """
    if slot not in COMPONENTS:
        from modtransfer.core.errors import UserError, did_you_mean

        raise UserError(f"unknown slot {slot!r}{did_you_mean(slot, COMPONENTS)}; slots are {', '.join(SLOTS)}")
    return COMPONENTS[slot].register(name, **meta)  # meta may carry override=True


def component(slot: str, name: str) -> Any:
    ensure_builtin_components()
    return COMPONENTS[slot].get(name)


def ensure_builtin_components() -> None:
    """Import the built-in component, variant and task modules (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    with loading_builtins():
        for mod in _BUILTIN_MODULES:
            try:
                importlib.import_module(f"modtransfer.variants.{mod}")
            except ModuleNotFoundError as exc:
                if exc.name != f"modtransfer.variants.{mod}":
                    raise
        importlib.import_module("modtransfer.tasks")  # built-in tasks register with the rest
