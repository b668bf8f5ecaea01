"""What the components of one stack share during a forward: a general hook for cross-layer
modifications (value residuals, U-net skips across the stack, value embeddings).

Each :class:`~modtransfer.core.model.Stack` owns a :class:`StackShared`. While the stack's blocks
are built, :func:`building_stack` returns it, so a component can :meth:`~StackShared.join` it in
``__init__`` (and learn how many of its kind joined before it, i.e. its layer). Before each
forward of the stack the model calls :meth:`~StackShared.begin` with the stack's token ids (None
for continuous inputs) and padding mask, and empties ``scratch``: what one block leaves there is
read by the later blocks of the same forward only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from torch import Tensor


class StackShared:
    """One stack's shared state: who joined (by kind), its tokens and padding, a per-forward scratch."""

    def __init__(self, causal: bool, cross: bool) -> None:
        self.causal, self.cross = causal, cross
        self.joined: dict[str, int] = {}
        self.tokens: Tensor | None = None
        self.pad_mask: Tensor | None = None
        self.scratch: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """``decoder`` for a causal stack, ``encoder`` otherwise (the names the sharing slot takes)."""
        return "decoder" if self.causal else "encoder"

    def join(self, key: str) -> int:
        """Count a component of kind ``key``; returns how many joined before it (0 for the first)."""
        n = self.joined.get(key, 0)
        self.joined[key] = n + 1
        return n

    def begin(self, tokens: Tensor | None, pad_mask: Tensor | None) -> None:
        """Start a forward: the stack's input token ids [B, T] (or None), its padding mask, an empty scratch."""
        self.tokens, self.pad_mask, self.scratch = tokens, pad_mask, {}


_BUILDING: ContextVar[StackShared | None] = ContextVar("building_stack", default=None)


def building_stack() -> StackShared | None:
    """The :class:`StackShared` of the stack whose blocks are being built (None outside one)."""
    return _BUILDING.get()


@contextmanager
def building(shared: StackShared) -> Iterator[StackShared]:
    """While the blocks of ``shared``'s stack are built, :func:`building_stack` returns it."""
    token = _BUILDING.set(shared)
    try:
        yield shared
    finally:
        _BUILDING.reset(token)
