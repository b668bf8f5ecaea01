"""The component registries, one per slot of :class:`~modtransfer.core.spec.ModelSpec`.

A component is a factory the builder calls for its slot (the interface of each slot is
documented in :mod:`modtransfer.core.protocols`, one ``Protocol`` per slot). Built-in components
live in ``variants/`` next to the variants that select them; :func:`modtransfer.builtins.load_builtins`
imports them, and the package installs it as the registries' loader, so reading any registry
(``VARIANTS.names()``, ``COMPONENTS["ffn"].get(...)``) loads the built-ins first by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.registry import Registry
from modtransfer.core.spec import SLOTS

COMPONENTS: dict[str, Registry[Any]] = {slot: Registry(f"{slot} component") for slot in SLOTS}


def register_component(slot: str, name: str, **meta: Any) -> Callable[[Any], Any]:
    """Decorator: register a component for ``slot`` under ``name``.

    >>> @register_component("activation", "squared_relu", paper="So et al. 2021")
    ... def squared_relu(x): ...
    """
    if slot not in COMPONENTS:
        raise UserError(f"unknown slot {slot!r}{did_you_mean(slot, COMPONENTS)}; slots are {', '.join(SLOTS)}")
    return COMPONENTS[slot].register(name, **meta)  # meta may carry override=True


def component(slot: str, name: str) -> Any:
    """The component registered as ``name`` for ``slot`` (the built-ins load on first use)."""
    return COMPONENTS[slot].get(name)
