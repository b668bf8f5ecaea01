"""The interface of each slot, typed: one ``Protocol`` per slot of :class:`~modtransfer.core.spec.ModelSpec`.

What a plugin's component must provide (the builder, :mod:`modtransfer.core.model`, calls it so):

``activation``  ``fn(x) -> x``, elementwise.
``ffn``         ``factory(spec, activation, layer_index) -> Module``; ``forward(x) -> x``; may set
                ``self.aux_loss`` (a scalar tensor) after each forward, added to the training loss.
                A module with ``takes_pad_mask = True`` is called ``forward(x, pad_mask=...)``
                (True at padded positions, or None), e.g. so routing can leave padding out.
                A factory with ``takes_stack = True`` is called with ``stack="encoder"|"decoder"``.
``norm``        ``factory(dim, eps) -> Module``.
``residual``    ``cls(spec, sublayer, norm_factory, index, n_sublayers) -> Module``;
                ``forward(x, **kw)`` calls ``sublayer(h, **kw)``; class attribute ``final_norm``
                says whether a stack ends with a norm.
``position``    ``cls(spec, causal) -> Module`` with ``embed(x) -> x`` (added to the input),
                ``bias(q_len, k_len, device, dtype) -> Tensor[H, q_len, k_len] | None`` and
                ``rotate(q, k) -> (q, k)`` (used when ``rotates`` is true). One per stack, so a
                relative bias is shared by the stack's layers (T5).
``attention``   ``cls(spec, causal, cross) -> Module``;
                ``forward(x, kv=None, *, pad_mask=None, bias=None, position=None) -> x``.
``embedding``   ``cls(spec, topology) -> Module`` with ``embed(tokens, stack) -> x``,
                ``output_weight() -> Tensor[V, d_out] | None`` (tied weight, or None), ``to_output(h)``
                (maps hidden states to the output head's input) and ``output_dim``.
``output``      ``cls(spec, in_dim, tied) -> Module`` with ``log_probs(h, weight)`` and
                ``token_nll(h, targets, weight) -> Tensor[B, T]`` (0 where ``targets == -100``).
``sharing``     ``fn(stack) -> bool``: whether ``"encoder"``/``"decoder"`` reuses one block.
``init``        ``fn(model, spec) -> None``, applied once after construction. A scheme with the
                attribute ``finishes = True`` applies the special inits and ``clone_layers``
                itself (see :func:`modtransfer.core.model.clone_blocks`); otherwise the builder does both after it.

A component of the ``attention`` or ``ffn`` slot that builds its projections with
``bias=spec.bias`` says so with ``honours_bias = True`` (see
:func:`modtransfer.core.spec.honours_bias`); without it a spec with ``bias=True`` is rejected.
Dropout rates come from ``spec.dropout_for(site)``, so ``spec.dropout_at`` decides where
dropout is applied. The same interfaces, typed, are the ``Protocol`` classes below
(:data:`SLOT_PROTOCOLS`).

Base classes that implement most of them are :class:`~modtransfer.variants.baseline.attention.AttentionBase`,
:class:`~modtransfer.variants.baseline.residual.ResidualBase` and :class:`~modtransfer.variants.baseline.norms.NormBase`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

if TYPE_CHECKING:
    from modtransfer.core.spec import ModelSpec


@runtime_checkable
class ActivationFn(Protocol):
    """``activation``: an elementwise function, applied inside the FFN (``relu``, ``gelu``)."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


class FFNFactory(Protocol):
    """``ffn``: builds the position-wise branch of block ``layer_index`` (from 0, per stack).

    The module's ``forward(x) -> x`` maps [B, T, d_model] to the same shape, position by
    position: a FFN must never mix positions (``check`` tests causality and padding). It may
    set ``aux_loss`` (a scalar tensor, weighted by ``spec.aux_loss_weight``) after each forward;
    with ``takes_pad_mask = True`` it is called ``forward(x, pad_mask=pad_mask)``; a module
    whose parameters are used only for some tokens sets ``conditional_grad = True``.
    """

    def __call__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0, /) -> nn.Module: ...


class NormFactory(Protocol):
    """``norm``: builds a normalisation of the last dimension, ``forward(x) -> x``."""

    def __call__(self, dim: int, eps: float, /) -> nn.Module: ...


class ResidualComponent(Protocol):
    """``residual``: wraps one sublayer (attention or FFN) of a block.

    ``forward(x, **kw)`` must call ``sublayer(h, **kw)`` (passing the keywords on: masks and
    positions travel in them) and combine the result with ``x``. ``index`` counts the stack's
    sublayers from 0 out of ``n_sublayers``; ``final_norm`` says whether a stack of these ends
    with a norm (pre-norm: yes; post-norm: no).
    """

    final_norm: ClassVar[bool]

    def __call__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory, index: int = 0,
                 n_sublayers: int = 1, /) -> nn.Module: ...


class PositionComponent(Protocol):
    """``position``: one per stack (``causal`` for a decoder); the built module provides
    ``embed(x) -> x`` (applied to the stack's input), ``bias(q_len, k_len, device, dtype) ->
    Tensor[H, q_len, k_len] | None`` (added to attention logits; set ``adds_bias = True``) and
    ``rotate(q, k) -> (q, k)`` (used when ``rotates = True``)."""

    def __call__(self, spec: ModelSpec, causal: bool = False, /) -> nn.Module: ...


class AttentionComponent(Protocol):
    """``attention``: builds self- (``cross=False``) or cross-attention (``cross=True``).

    ``forward(x, kv=None, *, pad_mask=None, bias=None, position=None) -> x``: ``kv`` is the
    encoder memory for cross-attention, ``pad_mask`` [B, S] is True at padded keys, ``bias`` is
    the position bias [H, T, S], ``position`` the stack's position module (rotation). A causal
    module must never let query i see keys after i, in training as in evaluation.
    """

    def __call__(self, spec: ModelSpec, causal: bool = False, cross: bool = False, /) -> nn.Module: ...


class EmbeddingComponent(Protocol):
    """``embedding``: token embeddings (``embed(tokens, stack) -> x``), the tied output weight
    (``output_weight() -> Tensor[V, d_out] | None``), ``to_output(h)`` and ``output_dim``."""

    def __call__(self, spec: ModelSpec, topology: str, /) -> nn.Module: ...


class OutputComponent(Protocol):
    """``output``: ``log_probs(h, weight) -> Tensor[B, T, V]`` (normalised) and
    ``token_nll(h, targets, weight) -> Tensor[B, T]`` (0 where ``targets == -100``)."""

    def __call__(self, spec: ModelSpec, in_dim: int, tied: bool, /) -> nn.Module: ...


@runtime_checkable
class SharingFn(Protocol):
    """``sharing``: whether the stack ``"encoder"`` / ``"decoder"`` reuses one block for all layers."""

    def __call__(self, stack: str, /) -> bool: ...


@runtime_checkable
class InitFn(Protocol):
    """``init``: initialises a built model in place, once; ``finishes = True`` when it applies
    the components' special inits and ``clone_layers`` itself."""

    def __call__(self, model: nn.Module, spec: ModelSpec, /) -> None: ...


#: The interface each slot's components implement.
SLOT_PROTOCOLS: dict[str, type] = {
    "activation": ActivationFn, "ffn": FFNFactory, "norm": NormFactory, "residual": ResidualComponent,
    "position": PositionComponent, "attention": AttentionComponent, "embedding": EmbeddingComponent,
    "output": OutputComponent, "sharing": SharingFn, "init": InitFn,
}
