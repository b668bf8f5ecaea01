"""The baseline's parameter sharing: none, every layer has its own block. Cross-layer sharing
(Lan et al. 2020, ALBERT, arXiv 1909.11942) is a modification, in :mod:`modtransfer.variants.sharing`.
"""

from __future__ import annotations

from modtransfer.core.components import register_component


@register_component("sharing", "none")
def share_none(stack: str) -> bool:
    return False
