"""How a report names and groups variants: the registry's slot and a display name.

A variant's group in the main table is the slot it registered (``@register_variant(..., slot=...)``),
not whichever spec field happens to differ first (Fixup changes the norm too, but is a residual
scheme). Its display name is the name its registry description spells (``SwiGLU: gated FFN ...``
-> SwiGLU, ``FFN activation GeLU(x) = ...`` -> GeLU), else its id in words (``block_sharing`` ->
Block sharing). A combination joins its parts' names and slots with " + ". A variant the registry
does not know (a plugin not loaded) keeps its id and falls back to the slot its spec changes.
"""

from __future__ import annotations

import functools
import re
from typing import Any

BASELINE = "baseline"


def _alnum(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


@functools.lru_cache(maxsize=512)
def _meta(name: str) -> dict[str, Any] | None:
    try:
        import modtransfer.builtins  # noqa: F401  (registers the built-in variants)
        from modtransfer.core.variant import VARIANTS

        return dict(VARIANTS.entry(name).meta) if name in VARIANTS else None
    except Exception:  # an unloadable registry: ids instead of names, never a failed report
        return None


def _part_name(part: str) -> str:
    base = part.split("(")[0]
    meta = _meta(base)
    if base == BASELINE:
        return "Baseline"
    for word in re.split(r"[\s:,;]+", (meta or {}).get("description", "")):
        word = word.split("(")[0]
        if word and _alnum(word) == _alnum(base):
            return word + part[len(base):]
    return base.replace("_", " ").capitalize() + part[len(base):] if meta else part


def display_name(variant: str) -> str:
    """The name a reader knows the variant by (``swiglu+rmsnorm`` -> SwiGLU + RMSNorm)."""
    return " + ".join(_part_name(p) for p in variant.split("+"))


def registered_slot(variant: str) -> str | None:
    """The slot(s) the variant registered (``ffn``; a combination's joined with " + "); None if unknown."""
    if variant == BASELINE:
        return BASELINE
    slots = []
    for p in variant.split("+"):
        meta = _meta(p.split("(")[0])
        if meta is None:
            return None
        slots.append(meta["slot"])
    return " + ".join(dict.fromkeys(slots))
