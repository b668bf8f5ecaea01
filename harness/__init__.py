"""modtransfer: does this Transformer modification's gain transfer across tasks?

Public API for plugin authors::

    from modtransfer import ModelSpec, register_variant, register_component
    from modtransfer import AttentionBase, ResidualBase, NormBase   # base classes to extend

The registries (``VARIANTS``, ``COMPONENTS``, ``TASKS``, ``IMPLEMENTATIONS``) list the built-ins
on first use. Importing the package stays light (no torch): the base classes, the slot
``Protocol``s and the contract helpers are imported when first named.
"""

from typing import Any

from modtransfer.builtins import load_builtins
from modtransfer.core import __version__  # noqa: F401  (the package version)
from modtransfer.core.components import COMPONENTS, register_component
from modtransfer.core.digest import code_digest
from modtransfer.core.errors import UserError
from modtransfer.core.implementations import apply_implementation, implementation_conflict
from modtransfer.core.profiles import IMPLEMENTATIONS, register_implementation
from modtransfer.core.registry import set_builtin_loader
from modtransfer.core.spec import SLOTS, ModelSpec
from modtransfer.core.task import TASKS, Budget, Task, register_task
from modtransfer.core.variant import CAPABILITIES, VARIANTS, register_variant, selector

#: Names served lazily (their modules import torch): name -> module that defines it.
_LAZY = {
    "AttentionBase": "modtransfer.variants.baseline.attention",
    "ResidualBase": "modtransfer.variants.baseline.residual",
    "NormBase": "modtransfer.variants.baseline.norms",
    "ActivationFn": "modtransfer.core.protocols", "FFNFactory": "modtransfer.core.protocols", "NormFactory": "modtransfer.core.protocols",
    "ResidualComponent": "modtransfer.core.protocols", "PositionComponent": "modtransfer.core.protocols",
    "AttentionComponent": "modtransfer.core.protocols", "EmbeddingComponent": "modtransfer.core.protocols",
    "OutputComponent": "modtransfer.core.protocols", "SharingFn": "modtransfer.core.protocols", "InitFn": "modtransfer.core.protocols",
    "SLOT_PROTOCOLS": "modtransfer.core.protocols",
    "plugin_frame": "modtransfer.check.contract", "run_contract": "modtransfer.check.contract",
}

__all__ = [
    "CAPABILITIES", "COMPONENTS", "IMPLEMENTATIONS", "SLOTS", "TASKS", "VARIANTS", "Budget", "ModelSpec", "Task",
    "UserError", "apply_implementation", "code_digest", "implementation_conflict", "register_component",
    "register_implementation", "register_task", "register_variant", "selector", *_LAZY,
]


def __getattr__(name: str) -> Any:
    """The torch-dependent exports, imported on first use (``modtransfer ls`` never pays for them)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modtransfer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


# last: from here on, reading a registry (or registering from outside the package) loads the built-ins
set_builtin_loader(load_builtins)
