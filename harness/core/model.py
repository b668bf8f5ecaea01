"""One Transformer builder for three topologies, assembled from slot components.

``build(spec, topology)`` returns a :class:`Transformer` whose parts are looked up by slot in
:data:`modtransfer.core.components.COMPONENTS`. Topologies share the same blocks:

* ``decoder``: causal self-attention stack (language modelling);
* ``encoder``: bidirectional stack (regression, classification);
* ``encoder_decoder``: encoder + decoder with causal self-attention and cross-attention
  (Vaswani et al. 2017, "Attention Is All You Need", arXiv 1706.03762).

The interface of each slot (what a plugin's component must provide) is documented, typed, in
:mod:`modtransfer.core.protocols`.

Capabilities a task offers and a variant may require (``register_variant(requires=...)``):
``vocab`` (token inputs and a softmax output), ``padding`` (batches carry padded positions),
``decoder`` / ``encoder`` / ``encoder_decoder`` (the task's topology), ``causal`` (the model
has a causal decoder stack: ``decoder`` and ``encoder_decoder`` tasks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modtransfer.core.components import component
from modtransfer.core.draws import Draws, draws_of
from modtransfer.core.errors import UserError
from modtransfer.core.registry import Registry
from modtransfer.core.spec import ModelSpec
from modtransfer.core.stack_shared import StackShared, building
from modtransfer.core.validate import check_components

#: The target of a position that counts in no loss (padding), as ``torch.nn.functional.cross_entropy``'s default.
IGNORE_INDEX = -100


class Block(nn.Module):
    """Self-attention, optional cross-attention, FFN; each wrapped by the residual component."""

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, index: int, draws: Draws | None = None,
                 place: str = "") -> None:
        super().__init__()
        draws = draws or Draws(None)
        residual = component("residual", spec.residual)
        norm = component("norm", spec.norm)
        attention = component("attention", spec.attention)
        ffn = component("ffn", spec.ffn)
        activation = component("activation", spec.activation)
        per_block = 3 if cross else 2
        total = spec.n_layers * per_block
        first = index * per_block
        draws.at(f"{place}.attn")
        self.attn = residual(spec, attention(spec, causal=causal, cross=False), norm, first, total)
        draws.at(f"{place}.cross")
        self.cross = (
            residual(spec, attention(spec, causal=False, cross=True), norm, first + 1, total) if cross else None
        )
        draws.at(f"{place}.ffn")
        if getattr(ffn, "takes_stack", False):  # an FFN that differs by stack (product-key memory)
            branch = ffn(spec, activation, index, stack="decoder" if causal else "encoder")
        else:
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


#: Block classes by name: a variant whose layer is not attention-then-FFN (branched attention with
#: its own FFNs, a searched cell) registers a class with :class:`Block`'s constructor and
#: ``forward`` and selects it with the option ``block`` (``spec.with_options(block=name)``);
#: ``standard`` is :class:`Block`.
BLOCKS: Registry[type[nn.Module]] = Registry("block")
BLOCKS.register("standard", Block)


class Stack(nn.Module):
    """A stack of blocks with its own position component and (see ``final_norm``) a final norm.

    ``topology`` is the model's (``""`` when unknown: an encoder-decoder if ``cross``).
    With ``spec.clone_layers`` every block must have the same parameters (names and shapes)
    as the first, since it starts as a copy of it (:func:`clone_blocks`). ``draws`` reseeds the
    generators before each component at its ``place`` (``decoder.position``,
    ``decoder.blocks.1.ffn``, ...; a no-op unless the model draws per module, :mod:`modtransfer.core.draws`).
    """

    def __init__(self, spec: ModelSpec, *, causal: bool, cross: bool, shared: bool, topology: str = "",
                 draws: Draws | None = None, place: str = "") -> None:
        super().__init__()
        draws = draws or Draws(None)
        place = place or ("decoder" if causal else "encoder")
        draws.at(f"{place}.position")
        self.position = component("position", spec.position)(spec, causal=causal)
        n_blocks, self.repeat = (1, spec.n_layers) if shared else (spec.n_layers, 1)  # shared: ALBERT, arXiv 1909.11942
        self.shared = StackShared(causal, cross)
        block_cls = BLOCKS.get(str(spec.option("block", "standard")))
        with building(self.shared):  # components may join it (modtransfer.core.stack_shared)
            self.blocks = nn.ModuleList(block_cls(spec, causal=causal, cross=cross, index=i, draws=draws,
                                                  place=f"{place}.blocks.{i}") for i in range(n_blocks))
        if spec.clone_layers:
            _check_clonable(spec, self.blocks)
        norm = component("norm", spec.norm)
        topology = topology or ("encoder_decoder" if cross else "")
        draws.at(f"{place}.final_norm")
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


#: Stack classes by name: a variant that changes how a stack runs its blocks (a loop with halting,
#: pooling between blocks) registers a :class:`Stack` subclass and selects it with the option
#: ``stack`` (``spec.with_options(stack=name)``); ``standard`` is :class:`Stack`.
STACKS: Registry[type[Stack]] = Registry("stack")
STACKS.register("standard", Stack)


def _check_clonable(spec: ModelSpec, blocks: nn.ModuleList) -> None:
    first = [(n, tuple(p.shape)) for n, p in blocks[0].named_parameters()]
    for i, block in enumerate(blocks):
        if [(n, tuple(p.shape)) for n, p in block.named_parameters()] != first:
            raise UserError(
                f"ModelSpec.clone_layers (implementation {spec.implementation!r}) starts every layer as a copy of "
                f"the first, but layer {i} has other parameters than layer 0 (ffn {spec.ffn!r} differs by layer); "
                "this combination cannot be built"
            )


def apply_special_inits(model: nn.Module) -> None:
    """Call ``reset_special(topology, stack)`` on every module that has one (each module once).

    Components with their own init (Fixup, ReZero, DeepNorm, T5's unscaled attention) define
    ``reset_special``; every init scheme ends with this, so those inits win over the scheme.
    With per-module draws (:mod:`modtransfer.core.draws`) each hook draws from (seed, its module's name).
    """
    topology = getattr(model, "topology", "")
    seen: set[int] = set()
    draws = draws_of(model)
    stacks: list[tuple[str, object]] = [(name, getattr(model, name, None)) for name in ("encoder", "decoder")]
    stacks.append(("", model))
    for stack, root in stacks:
        if isinstance(root, nn.Module):
            reset_specials(root, topology, stack, seen, draws)


def reset_specials(root: nn.Module, topology: str, stack: str, seen: set[int], draws: Draws | None = None) -> None:
    """``reset_special(topology, stack)`` on each module under ``root`` not yet in ``seen`` (ids);
    with active ``draws``, each from (seed, ``stack``, the module's name under ``root``)."""
    for name, m in root.named_modules():
        hook = getattr(m, "reset_special", None)
        if callable(hook) and id(m) not in seen:
            seen.add(id(m))
            if draws is not None:
                draws.at(f"special:{stack}.{name}")
            hook(topology, stack)


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

    def __init__(self, spec: ModelSpec, topology: str, seed: int | None = None) -> None:
        """``seed``: with ``spec.init_draws == "per_module"``, the cell's seed that (with each
        component's place) determines every initial draw (:mod:`modtransfer.core.draws`); the
        caller's generator state is then left as it was. Without it, or with ``global`` draws,
        everything is drawn in construction order from the global generator."""
        super().__init__()
        if topology not in ("decoder", "encoder", "encoder_decoder"):
            raise ValueError(f"unknown topology {topology!r}")
        check_components(spec)
        self.spec = spec
        self.topology = topology
        self.has_vocab = spec.vocab_size > 0
        draws = Draws(seed, spec.init_draws)
        self.init_seed = draws.seed   # read by the init schemes (draws_of); None unless per-module draws
        with draws.scope():
            self._build_parts(spec, topology, draws)
            init = component("init", spec.init)
            draws.at("init")
            init(self, spec)
            if not getattr(init, "finishes", False):
                apply_special_inits(self)  # components' own inits (Fixup, ReZero, DeepNorm, ...) win over the scheme
                if spec.clone_layers:
                    clone_blocks(self)
        #: modules that record an ``aux_loss`` (and may carry an ``aux_weight``): attributes nn.Module does not type
        self._aux: list[Any] = [m for m in self.modules() if hasattr(m, "aux_loss")]

    def _build_parts(self, spec: ModelSpec, topology: str, draws: Draws) -> None:
        """Inputs, outputs and stacks, each component reseeded for its place (a no-op for global draws)."""
        if self.has_vocab:
            draws.at("embedding")
            self.embedding = component("embedding", spec.embedding)(spec, topology)
            draws.at("output")
            self.output = component("output", spec.output)(
                spec, self.embedding.output_dim, self.embedding.output_weight() is not None
            )
        else:
            if spec.in_features < 1 or spec.out_features < 1:
                raise ValueError("a model without vocabulary needs in_features and out_features")
            draws.at("in_proj")
            self.in_proj = nn.Linear(spec.in_features, spec.d_model)
            draws.at("out_proj")
            self.out_proj = nn.Linear(spec.d_model, spec.out_features)
        shares = component("sharing", spec.sharing)
        stack_cls = STACKS.get(str(spec.option("stack", "standard")))
        self.encoder = (
            stack_cls(spec, causal=False, cross=False, shared=shares("encoder"), topology=topology, draws=draws,
                      place="encoder")
            if topology in ("encoder", "encoder_decoder") else None
        )
        self.decoder = (
            stack_cls(spec, causal=True, cross=topology == "encoder_decoder", shared=shares("decoder"),
                      topology=topology, draws=draws, place="decoder")
            if topology in ("decoder", "encoder_decoder") else None
        )

    # -- inputs -------------------------------------------------------------------------
    def _inputs(self, x: Tensor, stack: str) -> Tensor:
        if x.is_floating_point():
            return self.in_proj(x)
        return self.embedding.embed(x, stack)

    def encode(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Bidirectional encoding of tokens [B, S] or features [B, S, F] -> [B, S, D]."""
        if self.encoder is None:
            raise RuntimeError(f"a {self.topology} model has no encoder")
        self._begin(self.encoder, x, pad_mask)
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
        self._begin(self.decoder, y, pad_mask)
        return self.decoder(self._inputs(y, "decoder"), pad_mask, memory, memory_pad_mask)

    @staticmethod
    def _begin(stack: nn.Module, x: Tensor, pad_mask: Tensor | None) -> None:
        shared = getattr(stack, "shared", None)
        if isinstance(shared, StackShared):
            shared.begin(None if x.is_floating_point() else x, pad_mask)

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

    def aux_loss(self) -> Tensor:
        """Sum of auxiliary losses from the last forward (e.g. MoE load balancing), weighted.

        Always a scalar tensor (zero on the model's device when no module has one), so a
        training step writes ``loss + model.aux_loss()``. A module with an ``aux_weight``
        attribute weighs its own term (``aux_weight * aux_loss``) instead of ``spec.aux_loss_weight``.
        """
        losses = [m.aux_loss for m in self._aux if isinstance(m.aux_loss, Tensor) and not hasattr(m, "aux_weight")]
        own = [m.aux_weight * m.aux_loss for m in self._aux if isinstance(m.aux_loss, Tensor) and hasattr(m, "aux_weight")]
        if not losses and not own:
            return torch.zeros((), device=self._device())
        total = self.spec.aux_loss_weight * torch.stack(losses).sum() if losses else None
        if own:  # terms with their own weight (z-loss, multi-token heads), not spec.aux_loss_weight
            total = torch.stack(own).sum() if total is None else total + torch.stack(own).sum()
        assert total is not None  # losses or own is not empty here
        return total

    def _device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")


def build(spec: ModelSpec, topology: str, *, seed: int | None = None) -> Transformer:
    """Build the model a spec describes for a topology.

    ``seed``: the cell's seed. With ``spec.init_draws == "per_module"`` (the ``modtransfer``,
    ``t5`` and ``gpt2`` profiles) the initial weights are then a function of (spec, topology,
    seed) alone: each component and each parameter an init scheme redraws is drawn from
    (seed, its place in the model), so tensors a variant does not change start identical in
    both arms of a pair (common random numbers, :mod:`modtransfer.core.draws`), and the global
    generator is left as the caller had it. Without ``seed`` or with ``global`` draws the model
    draws from the global generator in construction order, as after ``torch.manual_seed(seed)``.
    """
    return Transformer(spec, topology, seed=seed)


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
