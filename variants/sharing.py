"""Parameter sharing across layers (Lan et al. 2020, ALBERT, arXiv 1909.11942).

none (baseline): every layer has its own block.
"""

from __future__ import annotations

from modtransfer.components import register_component


@register_component("sharing", "none")
def share_none(stack: str) -> bool:
    return False


@register_component("sharing", "all", paper="Lan et al. 2020, arXiv 1909.11942")
def share_all(stack: str) -> bool:
    return True
