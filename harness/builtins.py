"""The explicit loader of the built-in zoo: every component, variant and task the package ships.

``load_builtins()`` imports, once and marked as built in, the built-in tasks (``tasks/``), the
baseline's components (``variants/baseline/``) and then the modification modules (``variants/``:
each registers its components and variants). The package installs it as the registries' loader
(:func:`modtransfer.core.registry.set_builtin_loader`), so reading any registry loads the zoo first;
code that wants the zoo loaded up front calls it.
The imports sit inside the function so that ``import modtransfer`` stays light (no torch).
"""

from __future__ import annotations

import importlib

from modtransfer.core.registry import loading_builtins

#: The modification modules, imported in this order: the registry lists their variants in it (``ls variants``,
#: the README's zoo table; ``tests/data/variant_registry.json`` pins it), whatever imports one module makes of another.
VARIANT_MODULES = ("activations", "attention", "branched", "convolution", "depth", "output", "embeddings", "evolved",
                   "ffn", "residual", "init", "memory", "position", "modern_attention", "modern_blocks",
                   "modern_output", "modern_stack", "moe", "norms", "optimizers", "sharing", "stacks", "synthesizer",
                   "transparent")

_loaded = False


def load_builtins() -> None:
    """Import the built-in component, variant and task modules (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    with loading_builtins():  # importing a module registers what it defines (the imports are the point)
        import modtransfer.tasks  # noqa: F401  (built-in tasks register with the rest)
        import modtransfer.variants.baseline  # noqa: F401  (the baseline's parts, before any modification)
        for name in VARIANT_MODULES:
            importlib.import_module(f"modtransfer.variants.{name}")
