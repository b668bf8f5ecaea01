"""One Transformer builder for three topologies, assembled from slot components.

``build(spec, topology)`` returns a :class:`Transformer` whose parts are looked up by slot in
:data:`modtransfer.core.components.COMPONENTS`. Topologies share the same blocks:

* ``decoder``: causal self-attention stack (language modelling);
* ``encoder``: bidirectional stack (regression, classification);
* ``encoder_decoder``: encoder + decoder with causal self-attention and cross-attention
  (Vaswani et al. 2017, "Attention Is All You Need", arXiv 1706.03762).

Slot interfaces (what a plugin's component must provide):

``activation``  ``fn(x) -> x``, elementwise.
``ffn``         ``factory(spec, activation, layer_index) -> Module``; ``forward(x) -> x``; may set
                ``self.aux_loss`` (a scalar tensor) after each forward, added to the training loss.
                A module with ``takes_pad_mask = True`` is called ``forward(x, pad_mask=...)``
                (True at padded positions, or None), e.g. so routing can leave padding out.
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
                itself (see :func:`clone_blocks`); otherwise the builder does both after it.

A component of the ``attention`` or ``ffn`` slot that builds its projections with
``bias=spec.bias`` says so with ``honours_bias = True`` (see
:func:`modtransfer.core.spec.honours_bias`); without it a spec with ``bias=True`` is rejected.
Dropout rates come from ``spec.dropout_for(site)``, so ``spec.dropout_at`` decides where
dropout is applied. The same interfaces, typed, are the ``Protocol`` classes below
(:data:`SLOT_PROTOCOLS`); base classes that implement most of them are
:class:`~modtransfer.variants.attention.AttentionBase`,
:class:`~modtransfer.variants.residual.ResidualBase` and :class:`~modtransfer.variants.norms.NormBase`.

Capabilities a task offers and a variant may require (``register_variant(requires=...)``):
``vocab`` (token inputs and a softmax output), ``padding`` (batches carry padded positions),
``decoder`` / ``encoder`` / ``encoder_decoder`` (the task's topology), ``causal`` (the model
has a causal decoder stack: ``decoder`` and ``encoder_decoder`` tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from modtransfer.core.components import component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec

IGNORE_INDEX = -100


# -- slot interfaces ------------------------------------------------------------------------------
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

    def __call__(self, spec: Any, activation: Callable[[Tensor], Tensor], layer_index: int = 0, /) -> nn.Module: ...


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

    def __call__(self, spec: Any, sublayer: nn.Module, norm: NormFactory, index: int = 0,
                 n_sublayers: int = 1, /) -> nn.Module: ...


class PositionComponent(Protocol):
    """``position``: one per stack (``causal`` for a decoder); the built module provides
    ``embed(x) -> x`` (applied to the stack's input), ``bias(q_len, k_len, device, dtype) ->
    Tensor[H, q_len, k_len] | None`` (added to attention logits; set ``adds_bias = True``) and
    ``rotate(q, k) -> (q, k)`` (used when ``rotates = True``)."""

    def __call__(self, spec: Any, causal: bool = False, /) -> nn.Module: ...


class AttentionComponent(Protocol):
    """``attention``: builds self- (``cross=False``) or cross-attention (``cross=True``).

    ``forward(x, kv=None, *, pad_mask=None, bias=None, position=None) -> x``: ``kv`` is the
    encoder memory for cross-attention, ``pad_mask`` [B, S] is True at padded keys, ``bias`` is
    the position bias [H, T, S], ``position`` the stack's position module (rotation). A causal
    module must never let query i see keys after i, in training as in evaluation.
    """

    def __call__(self, spec: Any, causal: bool = False, cross: bool = False, /) -> nn.Module: ...


class EmbeddingComponent(Protocol):
    """``embedding``: token embeddings (``embed(tokens, stack) -> x``), the tied output weight
    (``output_weight() -> Tensor[V, d_out] | None``), ``to_output(h)`` and ``output_dim``."""

    def __call__(self, spec: Any, topology: str, /) -> nn.Module: ...


class OutputComponent(Protocol):
    """``output``: ``log_probs(h, weight) -> Tensor[B, T, V]`` (normalised) and
    ``token_nll(h, targets, weight) -> Tensor[B, T]`` (0 where ``targets == -100``)."""

    def __call__(self, spec: Any, in_dim: int, tied: bool, /) -> nn.Module: ...


@runtime_checkable
class SharingFn(Protocol):
    """``sharing``: whether the stack ``"encoder"`` / ``"decoder"`` reuses one block for all layers."""

    def __call__(self, stack: str, /) -> bool: ...


@runtime_checkable
class InitFn(Protocol):
    """``init``: initialises a built model in place, once; ``finishes = True`` when it applies
    the components' special inits and ``clone_layers`` itself."""

    def __call__(self, model: nn.Module, spec: Any, /) -> None: ...


#: The interface each slot's components implement.
SLOT_PROTOCOLS: dict[str, type] = {
    "activation": ActivationFn, "ffn": FFNFactory, "norm": NormFactory, "residual": ResidualComponent,
    "position": PositionComponent, "attention": AttentionComponent, "embedding": EmbeddingComponent,
    "output": OutputComponent, "sharing": SharingFn, "init": InitFn,
}


class Block(nn.Module):
    """Self-attention, optional cross-attention, FFN; each wrapped by the residual component."""

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, index: int) -> None:
        super().__init__()
        residual = component("residual", spec.residual)
        norm = component("norm", spec.norm)
        attention = component("attention", spec.attention)
        ffn = component("ffn", spec.ffn)
        activation = component("activation", spec.activation)
        per_block = 3 if cross else 2
        total = spec.n_layers * per_block
        first = index * per_block
        self.attn = residual(spec, attention(spec, causal=causal, cross=False), norm, first, total)
        self.cross = (
            residual(spec, attention(spec, causal=False, cross=True), norm, first + 1, total) if cross else None
        )
        branch = ffn(spec, activation, index)
        self.ffn_takes_pad = bool(getattr(branch, "takes_pad_mask", False))
        self.ffn = residual(spec, branch, norm, first + per_block - 1, total)

    def forward(
        self, x: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None, position: nn.Module,
        memory: Tensor | None, memory_pad_mask: Tensor | None,
    ) -> Tensor:
        x = self.attn(x, pad_mask=pad_mask, bias=bias, position=position)
        if self.cross is not None:
            x = self.cross(x, kv=memory, pad_mask=memory_pad_mask)
        return self.ffn(x, pad_mask=pad_mask) if self.ffn_takes_pad else self.ffn(x)


def has_final_norm(spec: ModelSpec, topology: str) -> bool:
    """Whether a stack of a model of ``topology`` ends with a norm (``spec.final_norm``)."""
    if spec.final_norm == "auto":
        return bool(component("residual", spec.residual).final_norm)
    if spec.final_norm == "encoder_decoder":
        return topology == "encoder_decoder"
    return spec.final_norm == "always"


class Stack(nn.Module):
    """A stack of blocks with its own position component and (see ``final_norm``) a final norm.

    ``topology`` is the model's (``""`` when unknown: an encoder-decoder if ``cross``).
    With ``spec.clone_layers`` every block must have the same parameters (names and shapes)
    as the first, since it starts as a copy of it (:func:`clone_blocks`).
    """

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, shared: bool, topology: str = "") -> None:
        super().__init__()
        self.position = component("position", spec.position)(spec, causal=causal)
        if shared:  # one block applied n_layers times (Lan et al. 2020, ALBERT, arXiv 1909.11942)
            self.blocks = nn.ModuleList([Block(spec, causal=causal, cross=cross, index=0)])
            self.repeat = spec.n_layers
        else:
            self.blocks = nn.ModuleList(Block(spec, causal=causal, cross=cross, index=i) for i in range(spec.n_layers))
            self.repeat = 1
        if spec.clone_layers:
            _check_clonable(spec, self.blocks)
        norm = component("norm", spec.norm)
        topology = topology or ("encoder_decoder" if cross else "")
        self.final_norm = norm(spec.d_model, spec.norm_eps) if has_final_norm(spec, topology) else nn.Identity()
        self.drop = nn.Dropout(spec.dropout_for("embed"))
        self.final_drop = nn.Dropout(spec.dropout_for("final"))

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, memory: Tensor | None = None,
        memory_pad_mask: Tensor | None = None,
    ) -> Tensor:
        x = self.drop(self.position.embed(x))
        n = x.shape[1]
        bias = self.position.bias(n, n, x.device, x.dtype)
        for _ in range(self.repeat):
            for block in self.blocks:
                x = block(x, pad_mask=pad_mask, bias=bias, position=self.position, memory=memory,
                          memory_pad_mask=memory_pad_mask)
        return self.final_drop(self.final_norm(x))


def _check_clonable(spec: ModelSpec, blocks: nn.ModuleList) -> None:
    first = [(n, tuple(p.shape)) for n, p in blocks[0].named_parameters()]
    for i, block in enumerate(blocks):
        if [(n, tuple(p.shape)) for n, p in block.named_parameters()] != first:
            raise UserError(
                f"ModelSpec.clone_layers (implementation {spec.implementation!r}) starts every layer as a copy of "
                f"the first, but layer {i} has other parameters than layer 0 (ffn {spec.ffn!r} differs by layer); "
                "this combination cannot be built"
            )


@torch.no_grad()
def clone_blocks(model: nn.Module) -> None:
    """Copy the first block of each stack into the others (``spec.clone_layers``).

    What ``torch.nn.TransformerEncoder``/``TransformerDecoder`` do with ``copy.deepcopy`` of
    the layer they are given: every layer starts identical.
    """
    for stack in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
        if not isinstance(stack, Stack):
            continue
        first = stack.blocks[0]
        source = dict(first.named_parameters()) | dict(first.named_buffers())
        for block in list(stack.blocks)[1:]:
            for name, t in [*block.named_parameters(), *block.named_buffers()]:
                t.copy_(source[name])


class Transformer(nn.Module):
    """A decoder, encoder or encoder-decoder built from a :class:`ModelSpec`."""

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        if topology not in ("decoder", "encoder", "encoder_decoder"):
            raise ValueError(f"unknown topology {topology!r}")
        spec.check_components()
        self.spec = spec
        self.topology = topology
        self.has_vocab = spec.vocab_size > 0
        if self.has_vocab:
            self.embedding = component("embedding", spec.embedding)(spec, topology)
            self.output = component("output", spec.output)(
                spec, self.embedding.output_dim, self.embedding.output_weight() is not None
            )
        else:
            if spec.in_features < 1 or spec.out_features < 1:
                raise ValueError("a model without vocabulary needs in_features and out_features")
            self.in_proj = nn.Linear(spec.in_features, spec.d_model)
            self.out_proj = nn.Linear(spec.d_model, spec.out_features)
        shares = component("sharing", spec.sharing)
        self.encoder = (
            Stack(spec, causal=False, cross=False, shared=shares("encoder"), topology=topology)
            if topology in ("encoder", "encoder_decoder") else None
        )
        self.decoder = (
            Stack(spec, causal=True, cross=topology == "encoder_decoder", shared=shares("decoder"), topology=topology)
            if topology in ("decoder", "encoder_decoder") else None
        )
        init = component("init", spec.init)
        init(self, spec)
        if not getattr(init, "finishes", False):
            from modtransfer.variants.init import apply_special_inits

            apply_special_inits(self)  # components' own inits (Fixup, ReZero, DeepNorm, ...) win over the scheme
            if spec.clone_layers:
                clone_blocks(self)
        self._aux = [m for m in self.modules() if hasattr(m, "aux_loss")]

    # -- inputs -------------------------------------------------------------------------
    def _inputs(self, x: Tensor, stack: str) -> Tensor:
        if x.is_floating_point():
            return self.in_proj(x)
        return self.embedding.embed(x, stack)

    def encode(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Bidirectional encoding of tokens [B, S] or features [B, S, F] -> [B, S, D]."""
        if self.encoder is None:
            raise RuntimeError(f"a {self.topology} model has no encoder")
        return self.encoder(self._inputs(x, "encoder"), pad_mask)

    def decode(
        self, y: Tensor, pad_mask: Tensor | None = None, memory: Tensor | None = None,
        memory_pad_mask: Tensor | None = None,
    ) -> Tensor:
        """Causal decoding of tokens [B, T] (attending to ``memory`` when given) -> [B, T, D]."""
        if self.decoder is None:
            raise RuntimeError(f"a {self.topology} model has no decoder")
        if self.topology == "encoder_decoder" and memory is None:
            raise ValueError("an encoder-decoder needs memory from encode()")
        return self.decoder(self._inputs(y, "decoder"), pad_mask, memory, memory_pad_mask)

    def forward(self, x: Tensor, y: Tensor | None = None, x_pad: Tensor | None = None,
                y_pad: Tensor | None = None) -> Tensor:
        if self.topology == "encoder":
            return self.encode(x, x_pad)
        if self.topology == "decoder":
            return self.decode(x, x_pad)
        assert y is not None
        return self.decode(y, y_pad, self.encode(x, x_pad), x_pad)

    # -- outputs ------------------------------------------------------------------------
    def token_nll(self, h: Tensor, targets: Tensor) -> Tensor:
        """Negative log-likelihood per position [B, T] in nats (0 where targets == -100)."""
        return self.output.token_nll(self.embedding.to_output(h), targets, self.embedding.output_weight())

    def log_probs(self, h: Tensor) -> Tensor:
        """Log-probabilities over the vocabulary [B, T, V]."""
        return self.output.log_probs(self.embedding.to_output(h), self.embedding.output_weight())

    def project(self, h: Tensor) -> Tensor:
        """Continuous outputs [B, S, out_features] for tasks without a vocabulary."""
        return self.out_proj(h)

    def aux_loss(self) -> Tensor | float:
        """Sum of auxiliary losses from the last forward (e.g. MoE load balancing), weighted."""
        losses = [m.aux_loss for m in self._aux if isinstance(m.aux_loss, Tensor)]
        if not losses:
            return 0.0
        return self.spec.aux_loss_weight * torch.stack(losses).sum()


def build(spec: ModelSpec, topology: str) -> Transformer:
    """Build the model a spec describes for a topology."""
    return Transformer(spec, topology)


def count_params(model_or_spec: nn.Module | ModelSpec, topology: str | None = None) -> int:
    """Trainable parameters (shared and tied ones counted once); specs are built on ``meta``."""
    if isinstance(model_or_spec, ModelSpec):
        assert topology is not None
        with torch.device("meta"):
            model_or_spec = Transformer(model_or_spec, topology)
    return sum(p.numel() for p in model_or_spec.parameters() if p.requires_grad)


def count_flops(spec: ModelSpec, topology: str, seq_len: int | None = None) -> float:
    """Forward FLOPs per token (matmuls, counted by ``torch.utils.flop_counter`` on ``meta``).

    For vocabulary tasks the output head (log-likelihood of every position) is included;
    for an encoder-decoder the source and target both have ``seq_len`` tokens and FLOPs are
    per target token.
    """
    from torch.utils.flop_counter import FlopCounterMode

    n = min(seq_len or spec.max_len, spec.max_len)
    with torch.device("meta"):
        model = Transformer(spec, topology)
        if spec.vocab_size:
            x = torch.zeros(1, n, dtype=torch.long)
        else:
            x = torch.zeros(1, n, spec.in_features)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            if topology == "encoder":
                h = model.encode(x)
            elif topology == "decoder":
                h = model.decode(x)
            else:
                h = model.decode(x, memory=model.encode(x))
            if spec.vocab_size:
                model.token_nll(h, torch.zeros(1, n, dtype=torch.long))
            else:
                model.project(h)
    return counter.get_total_flops() / n
