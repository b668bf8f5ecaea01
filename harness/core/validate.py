"""Whether a spec can be built: every slot string names a registered component that accepts it.

Kept apart from :mod:`modtransfer.core.spec` (pure data) because it reads the component and
implementation registries, which are themselves keyed by the spec's slots.
"""

from __future__ import annotations

from modtransfer.core.components import COMPONENTS
from modtransfer.core.errors import UserError
from modtransfer.core.profiles import IMPLEMENTATIONS
from modtransfer.core.spec import BIAS_SLOTS, SLOTS, ModelSpec, honours_bias


def check_components(spec: ModelSpec) -> None:
    """Raise :class:`UserError` unless every slot of ``spec`` names a registered component that takes it.

    A component may reject a combination before anything is built (its ``check_spec(spec)``), and a
    spec with ``bias=True`` needs attention and FFN components that build their projections with biases.
    """
    IMPLEMENTATIONS.entry(spec.implementation)
    for slot in SLOTS:
        entry = COMPONENTS[slot].entry(getattr(spec, slot))
        check = getattr(entry.obj, "check_spec", None)
        if callable(check):
            check(spec)
        if spec.bias and slot in BIAS_SLOTS and not honours_bias(entry.obj, entry.meta):
            raise UserError(
                f"the {slot} component {entry.name!r} has no bias terms, but ModelSpec.bias is true "
                f"(implementation {spec.implementation!r} puts biases on every projection); "
                "it cannot run on this implementation"
            )
