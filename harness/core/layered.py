"""Encoder memory that carries every encoder layer's output: a hook for cross-layer decoders.

``encode`` hands ``decode`` one tensor, the memory [B, S, D], and every caller (a task's loss,
greedy decoding, the contract suite) treats it as that. A decoder that reads *each* encoder
layer (transparent attention, Bapna et al. 2018, arXiv 1808.07561) needs more, without a new
interface for those callers. :class:`LayeredMemory` is the usual memory [B, S, D] (so shapes,
values and gradients are the ones every caller expects) with the attribute ``layers`` [B, S, K, D],
the K states of the encoder stack (its input and each layer's output).

The layers follow the memory through batch selection (``memory[rows]`` with a boolean or integer
index, or a slice, over the batch: what greedy decoding does as rows finish), so they stay aligned
with it. Every other operation returns a plain tensor: a result that is no longer the memory of
the same batch rows loses its layers rather than carrying stale ones; a decoder that needs them
then says so (:func:`layers_of`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class LayeredMemory(Tensor):
    """The encoder memory [B, S, D] with every encoder layer's state in ``layers`` [B, S, K, D]."""

    layers: Tensor

    @staticmethod
    def __new__(cls, memory: Tensor, layers: Tensor) -> LayeredMemory:
        if layers.dim() != memory.dim() + 1 or layers.shape[:2] != memory.shape[:2]:
            raise ValueError(f"layers {tuple(layers.shape)} do not match memory {tuple(memory.shape)}")
        out = memory.as_subclass(cls)   # the same storage and autograd history as ``memory``
        out.layers = layers
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if func is Tensor.__getitem__ and isinstance(args[0], LayeredMemory) and _selects_rows(args[1]):
            return LayeredMemory(out, args[0].layers[args[1]])
        return out


def _selects_rows(index: Any) -> bool:
    """Whether ``index`` selects along the batch axis only (a slice, or a 1-D bool/integer tensor)."""
    if isinstance(index, slice):
        return True
    return isinstance(index, Tensor) and index.dim() == 1 and not index.is_floating_point()


def layers_of(memory: Tensor | None) -> Tensor:
    """The encoder layers [B, S, K, D] a memory carries; a clear error when it carries none."""
    layers = getattr(memory, "layers", None)
    if not isinstance(layers, Tensor):
        raise ValueError(
            "this decoder reads every encoder layer, but its memory carries only the last one: pass the "
            "memory from this model's encode() unchanged (selecting batch rows keeps its layers)"
        )
    return layers
