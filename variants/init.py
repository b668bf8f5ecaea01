"""Initialisation schemes, applied once after the model is built.

default: PyTorch's own per-module initialisation (Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)))
and N(0, 1/d) embeddings.
xavier_uniform / xavier_normal (Glorot & Bengio 2010): Var(W) = gain^2 2 / (fan_in + fan_out).
kaiming_uniform / kaiming_normal (He et al. 2015, arXiv 1502.01852): Var(W) = 2 / fan_in (ReLU gain).
normal(std): N(0, std^2), default std 0.02 (GPT-2, BERT). uniform(a): U(-a, a), default a 0.05.
The scale (gain, std or a) is ``spec.init_scale``; 0 means the scheme's default.

What a scheme touches: the weight of every ``nn.Linear`` (biases set to 0), with the fused
attention projections treated as their separate Q, K, V matrices (their ``branch_weights()``).
Token embeddings, position tables, relative-bias tables and norm gains keep their own init,
because the embedding component ties its scale to the sqrt(d) input multiplier and the tied
output layer.

Implementation schemes (selected by the ``torch``, ``t5`` and ``gpt2`` implementation profiles,
see :mod:`modtransfer.core.implementations`):
torch: what PyTorch's own modules do (``torch.nn.Linear.reset_parameters``,
``torch.nn.MultiheadAttention._reset_parameters``, ``nn.TransformerEncoder`` cloning its layer,
``nn.Transformer._reset_parameters``), see :func:`init_torch`.
t5: Mesh TensorFlow's T5 init, N(0, 1/fan_in) on every projection (:func:`init_t5`).
gpt2: N(0, 0.02^2), residual output projections N(0, 0.02^2 / (2 n_layers)) (:func:`init_gpt2`).

Special inits: a module with its own initialisation (Fixup, ReZero alpha, DeepNorm beta, the
unscaled-attention W_q) defines ``reset_special(topology, stack)``; every scheme ends with
:func:`modtransfer.core.model.apply_special_inits`, so those inits win over the scheme. ``reset_special`` re-applies
the init from scratch, so a second call is harmless. A plugin init scheme should end with
``apply_special_inits(model)`` too.

Draws: with ``spec.init_draws == "per_module"`` and a seeded build (:mod:`modtransfer.core.draws`)
the schemes that redraw tensors draw each one from (seed, its name) (:func:`init_linear_weights`,
the ``*_all`` schemes, ``gpt2``'s residual projections), so a tensor a variant does not change gets
the same numbers in both arms of a pair (common random numbers). ``torch`` keeps PyTorch's draw
order from the global generator (its profile has ``global`` draws: that order is what makes its
layers equal ``torch.nn``'s for the same generator state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from modtransfer.core.components import component, register_component
from modtransfer.core.draws import draws_of
from modtransfer.core.errors import UserError
from modtransfer.core.model import apply_special_inits, clone_blocks, reset_specials
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.residual import branch_weights

WeightInit = Callable[[Tensor], object]


@torch.no_grad()
def init_linear_weights(model: nn.Module, init: WeightInit) -> None:
    """Apply ``init`` in place to every Linear weight (fused projections part by part); zero biases.

    With per-module draws (:mod:`modtransfer.core.draws`) each weight (each part of a fused
    projection) is drawn from (seed, its name), so a weight a variant leaves alone gets the same
    draws in both arms of a pair; otherwise in module order from the global generator.
    """
    draws = draws_of(model)
    done: set[int] = set()
    for name, m in model.named_modules():
        parts = getattr(m, "branch_weights", None)
        if callable(parts) and not isinstance(m, nn.Linear):   # covers all its own Linear layers
            for role, views in parts().items():
                for i, w in enumerate(views):
                    draws.at(f"scheme:{name}.{role}.{i}")
                    init(w)
            done.update(id(c) for c in m.children() if isinstance(c, nn.Linear))
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if id(m) not in done:
                draws.at(f"scheme:{name}.weight")
                init(m.weight)
            if m.bias is not None:
                m.bias.zero_()


#: ``scope`` of a scheme: "weights" (every Linear weight, biases zeroed; the default), "all"
#: (every parameter tensor: embeddings, position tables and, for the schemes defined on vectors,
#: biases and norm gains too) or "matrices" (the idiom ``for p in model.parameters(): if p.dim() > 1:
#: init_(p)`` run on the built model: every tensor of two or more dimensions drawn whole, a fused
#: QKV projection as one matrix, after the implementation's own init and layer cloning; biases and
#: norm gains keep that init). Studies differ here and rarely say which they used.
SCOPES = ("weights", "all", "matrices")
#: Schemes defined for any tensor; the fan-based ones (xavier, kaiming) need two dimensions, so
#: with scope "all" they draw every parameter of two or more dimensions, as the idiom
#: ``for p in model.parameters(): if p.dim() > 1: init(p)`` does (``nn.Transformer._reset_parameters``).
VECTOR_SCHEMES = ("normal", "uniform")


def _scheme(name: str, make: Callable[[float], WeightInit], paper: str, what: str) -> None:
    def scheme(model: nn.Module, spec: ModelSpec) -> None:
        init_linear_weights(model, make(spec.init_scale))
        apply_special_inits(model)

    scheme.__name__ = scheme.__qualname__ = f"init_{name}"
    scheme.__doc__ = f"{what} on every Linear weight, then the modules' special inits."
    register_component("init", name, paper=paper)(scheme)

    @torch.no_grad()
    def scheme_all(model: nn.Module, spec: ModelSpec) -> None:
        init, draws = make(spec.init_scale), draws_of(model)
        for pname, p in model.named_parameters():
            if p.dim() > 1 or name in VECTOR_SCHEMES:
                draws.at(f"scheme:{pname}")   # per-module draws: from (seed, parameter name)
                init(p)
        apply_special_inits(model)

    scheme_all.__name__ = scheme_all.__qualname__ = f"init_{name}_all"
    scheme_all.__doc__ = (f"{what} on every parameter" + (" (biases and norm gains included)" if name in VECTOR_SCHEMES
                                                          else " of two or more dimensions (embeddings included)")
                          + ", then the modules' special inits.")
    register_component("init", f"{name}_all", paper=paper)(scheme_all)

    @torch.no_grad()
    def scheme_matrices(model: nn.Module, spec: ModelSpec) -> None:
        built_as(model, spec)
        init, draws = make(spec.init_scale), draws_of(model)
        for pname, p in forward_order(model):
            if p.dim() > 1:
                draws.at(f"scheme:{pname}")
                init(p)
        apply_special_inits(model)

    scheme_matrices.__name__ = scheme_matrices.__qualname__ = f"init_{name}_matrices"
    scheme_matrices.__doc__ = (f"{what} on every parameter of two or more dimensions, each drawn whole, after the "
                               "implementation's own init and layer cloning (biases and norm gains keep theirs).")
    scheme_matrices.finishes = True  # type: ignore[attr-defined]  # it clones before drawing, never after
    register_component("init", f"{name}_matrices", paper=paper)(scheme_matrices)


#: ``ModelSpec.extra`` key of the init a "matrices" scheme runs first (the spec's init before the variant).
BASE_INIT = "init_base"


def built_as(model: nn.Module, spec: ModelSpec) -> None:
    """Initialise ``model`` as it was built before an init variant: the init named by the spec's
    :data:`BASE_INIT` option (``default`` without one), special inits and layer cloning included."""
    base = component("init", spec.option(BASE_INIT, "default"))
    base(model, spec.replace(init=spec.option(BASE_INIT, "default"), init_scale=0.0))
    if not getattr(base, "finishes", False):
        apply_special_inits(model)
        if spec.clone_layers:
            clone_blocks(model)


def forward_order(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters in the order a model written from input to output registers them: the output
    layer (``out_proj`` / ``output``) last, as in ``nn.Linear -> nn.TransformerEncoder -> nn.Linear``."""
    params = list(model.named_parameters())
    last = [(n, p) for n, p in params if n.split(".")[0] in ("out_proj", "output")]
    return [(n, p) for n, p in params if n.split(".")[0] not in ("out_proj", "output")] + last


# -- implementation schemes --------------------------------------------------------------
def _is_attention(m: nn.Module) -> bool:
    """An attention component: it names its projections by role (``branch_weights``)."""
    return (not isinstance(m, nn.Linear) and callable(getattr(m, "branch_weights", None))
            and callable(getattr(m, "output_layers", None)))


@torch.no_grad()
def _xavier_fused(views: list[Tensor]) -> None:
    """Xavier-uniform over the views stacked row-wise as one matrix.

    ``nn.MultiheadAttention`` keeps W_q, W_k, W_v as one ``in_proj_weight`` [3d, d] and
    initialises it whole, so the bound is sqrt(6 / (d + 3d)), not the per-matrix sqrt(6 / 2d).
    Drawn into one tensor and copied, so the numbers equal PyTorch's for the same RNG state.
    """
    if not views:
        return
    fused = torch.empty(sum(v.shape[0] for v in views), views[0].shape[1], device=views[0].device,
                        dtype=views[0].dtype)
    nn.init.xavier_uniform_(fused)
    start = 0
    for v in views:
        v.copy_(fused[start:start + v.shape[0]])
        start += v.shape[0]


@torch.no_grad()
def _torch_attention_init(m: nn.Module) -> None:
    """``nn.MultiheadAttention``'s init, in its order: ``out_proj`` is an ``nn.Linear`` built
    (kaiming-uniform a=sqrt(5) weight, uniform bias) before ``_reset_parameters`` draws the fused
    in_proj weight xavier-uniform and sets in_proj_bias and out_proj.bias to 0."""
    for layer in m.output_layers():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
    roles = m.branch_weights()
    _xavier_fused(list(roles.get("score", [])) + list(roles.get("input", [])))
    for layer in m.modules():
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            layer.bias.zero_()


@torch.no_grad()
def _torch_module_init(root: nn.Module, skip: set[int] | None = None) -> None:
    """Every module's own PyTorch init, in registration order (attention as ``nn.MultiheadAttention``)."""
    done = set(skip or ())
    for m in root.modules():
        if id(m) in done:
            continue
        if _is_attention(m):
            _torch_attention_init(m)
            done.update(id(c) for c in m.modules())
            continue
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


@torch.no_grad()
def _xavier_matrices(blocks: Iterable[nn.Module]) -> None:
    """``nn.Transformer._reset_parameters``: xavier-uniform on every parameter of more than one
    dimension, in parameter order (a fused attention input projection as one matrix)."""
    for block in blocks:
        done: set[int] = set()
        for m in block.modules():
            if id(m) in done:
                continue
            if _is_attention(m):
                roles = m.branch_weights()
                _xavier_fused(list(roles.get("score", [])) + list(roles.get("input", [])))
                for layer in m.output_layers():
                    nn.init.xavier_uniform_(layer.weight)
                done.update(id(c) for c in m.modules())
                continue
            for p in m.parameters(recurse=False):
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)


def _stacks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, s) for name in ("encoder", "decoder") if isinstance(s := getattr(model, name, None), nn.Module)]


@register_component("init", "torch", paper="PyTorch torch.nn.Transformer* (torch/nn/modules/transformer.py)")
@torch.no_grad()
def init_torch(model: nn.Module, spec: ModelSpec) -> None:
    """PyTorch's own initialisation of the modules ``torch.nn.Transformer*`` is built from.

    1. Each stack's layers get the init PyTorch gives a freshly built ``TransformerEncoderLayer``
       / ``TransformerDecoderLayer``: ``nn.Linear`` kaiming-uniform(a=sqrt(5)) weights and
       U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases (``Linear.reset_parameters``), attention as
       ``nn.MultiheadAttention`` (:func:`_torch_attention_init`), LayerNorm 1 and 0. With
       ``spec.clone_layers`` only the first layer is drawn and copied into the others, as
       ``nn.TransformerEncoder(layer, N)`` deep-copies the layer it is given (``_get_clones``).
    2. In an encoder-decoder, as ``nn.Transformer.__init__`` ends: xavier-uniform on every
       parameter of more than one dimension of both stacks (``_reset_parameters``), so there
       the layers' matrices differ while their biases stay the clones'.
    3. The rest of the model (input/output layers outside the stacks) gets each module's own
       init (``reset_parameters``); token embeddings and position tables keep theirs.
    Special inits (Fixup, ReZero, ...) are applied to a layer before it is copied and again
    after step 2. The stacks are drawn first, encoder then decoder, so for the same RNG state
    the layers are exactly PyTorch's (tested against ``torch.nn`` in tests/test_implementations.py).
    """
    topology = getattr(model, "topology", "")
    seen: set[int] = set()
    stacks = _stacks(model)
    for name, stack in stacks:
        blocks = list(getattr(stack, "blocks", []))
        for block in blocks[:1] if spec.clone_layers else blocks:
            _torch_module_init(block)
        final = getattr(stack, "final_norm", None)
        if isinstance(final, nn.Module):
            _torch_module_init(final)
        reset_specials(stack, topology, name, seen)
    if spec.clone_layers:
        clone_blocks(model)
    if topology == "encoder_decoder":
        for _, stack in stacks:
            _xavier_matrices(getattr(stack, "blocks", []))
        seen.clear()
        for name, stack in stacks:
            reset_specials(stack, topology, name, seen)
    inside = {id(m) for _, stack in stacks for m in stack.modules()}
    _torch_module_init(model, skip=inside)
    reset_specials(model, topology, "", seen)


init_torch.finishes = True  # type: ignore[attr-defined]  # applies special inits and cloning itself


@register_component("init", "t5", paper="Raffel et al. 2020, arXiv 1910.10683 (Mesh TensorFlow T5)")
def init_t5(model: nn.Module, spec: ModelSpec) -> None:
    """Mesh TensorFlow's T5 init: every projection N(0, factor^2 / fan_in), biases 0.

    In Mesh TF's T5 (and its Hugging Face port, ``T5PreTrainedModel._init_weights``): W_k, W_v
    N(0, 1/d_model), W_o N(0, 1/(H d_kv)), FFN W_i N(0, 1/d_model) and W_o N(0, 1/d_ff), i.e.
    1/fan_in for each (fused projections part by part); W_q N(0, 1/(d_model d_kv)) is the
    ``unscaled`` attention's own special init (applied last). factor = ``spec.init_scale`` or 1.
    The relative-bias table (N(0, 1/d_model)) and the ``tied_t5`` embedding (N(0, 1)) keep
    their own init.
    """
    factor = spec.init_scale or 1.0
    init_linear_weights(model, lambda w: nn.init.normal_(w, 0.0, factor * w.shape[1] ** -0.5))
    apply_special_inits(model)


@register_component("init", "gpt2", paper="Radford et al. 2019 (GPT-2); karpathy/nanoGPT model.py")
@torch.no_grad()
def init_gpt2(model: nn.Module, spec: ModelSpec) -> None:
    """GPT-2's init: every projection N(0, std^2), biases 0, and the projection that ends each
    residual branch (attention W_o, FFN W_2) N(0, std^2 / (2 n_layers)).

    Radford et al. 2019, section 2.3: "we scale the weights of residual layers at
    initialization by a factor of 1/sqrt(N) where N is the number of residual layers"; N =
    2 n_layers (two branches per layer) as in nanoGPT (``c_proj.weight`` std
    0.02 / sqrt(2 n_layer)). std = ``spec.init_scale`` or 0.02. Embeddings and position tables
    keep their own init (``tied_gpt2``: N(0, 0.02^2); ``learned``: N(0, 0.02^2)).
    """
    std = spec.init_scale or 0.02
    init_linear_weights(model, lambda w: nn.init.normal_(w, 0.0, std))
    residual_std = std / math.sqrt(2 * spec.n_layers)
    draws = draws_of(model)
    for name, m in model.named_modules():
        sublayer = getattr(m, "sublayer", None)
        if isinstance(sublayer, nn.Module):
            for i, w in enumerate(branch_weights(sublayer)["output"]):
                draws.at(f"scheme:{name}.residual_output.{i}")
                w.normal_(0.0, residual_std)
    apply_special_inits(model)


_GLOROT = "Glorot & Bengio 2010, AISTATS"
_HE = "He et al. 2015, arXiv 1502.01852"
_scheme("xavier_uniform", lambda s: lambda w: nn.init.xavier_uniform_(w, gain=s or 1.0), _GLOROT,
        "Xavier/Glorot uniform U(-a, a), a = gain sqrt(6 / (fan_in + fan_out))")
_scheme("xavier_normal", lambda s: lambda w: nn.init.xavier_normal_(w, gain=s or 1.0), _GLOROT,
        "Xavier/Glorot normal, std = gain sqrt(2 / (fan_in + fan_out))")
_scheme("kaiming_uniform", lambda s: lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"), _HE,
        "Kaiming/He uniform U(-a, a), a = sqrt(6 / fan_in)")
_scheme("kaiming_normal", lambda s: lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), _HE,
        "Kaiming/He normal, std = sqrt(2 / fan_in)")
_scheme("normal", lambda s: lambda w: nn.init.normal_(w, 0.0, s or 0.02), "Radford et al. 2019 (GPT-2)",
        "N(0, std^2)")
_scheme("uniform", lambda s: lambda w: nn.init.uniform_(w, -(s or 0.05), s or 0.05), "",
        "U(-a, a)")


# -- variants --------------------------------------------------------------------------
def _scoped(name: str, scope: str, spec: ModelSpec, **scale: object) -> ModelSpec:
    """``spec`` with init scheme ``name`` in ``scope``, its scale (``gain=``, ``std=`` or ``a=``, a positive
    number) as ``init_scale``; "matrices" records the init it runs first (:data:`BASE_INIT`)."""
    variant = f"init_{name}"
    if scope not in SCOPES:
        raise UserError(f"variant {variant}: scope must be 'weights' (Linear weights only), 'all' (every "
                        f"parameter) or 'matrices' (every tensor of 2+ dims, drawn whole), got {scope!r}")
    out = spec.replace(init=name if scope == "weights" else f"{name}_{scope}")
    for key, value in scale.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise UserError(f"variant {variant}: {key} must be a positive number, got {value!r}")
        out = out.replace(init_scale=float(value))
    return out.with_options(**{BASE_INIT: spec.init}) if scope == "matrices" else out


@register_variant("init_xavier_uniform", slot="init", paper=_GLOROT)
def init_xavier_uniform(spec: ModelSpec, gain: float = 1.0, scope: str = "weights") -> ModelSpec:
    """Xavier/Glorot uniform init of every Linear weight (gain a parameter, default 1)."""
    return _scoped("xavier_uniform", scope, spec, gain=gain)


@register_variant("init_xavier_normal", slot="init", paper=_GLOROT)
def init_xavier_normal(spec: ModelSpec, gain: float = 1.0, scope: str = "weights") -> ModelSpec:
    """Xavier/Glorot normal init of every Linear weight (gain a parameter, default 1)."""
    return _scoped("xavier_normal", scope, spec, gain=gain)


@register_variant("init_kaiming_uniform", slot="init", paper=_HE)
def init_kaiming_uniform(spec: ModelSpec, scope: str = "weights") -> ModelSpec:
    """Kaiming/He uniform init (fan_in, ReLU gain) of every Linear weight."""
    return _scoped("kaiming_uniform", scope, spec)


@register_variant("init_kaiming_normal", slot="init", paper=_HE)
def init_kaiming_normal(spec: ModelSpec, scope: str = "weights") -> ModelSpec:
    """Kaiming/He normal init (fan_in, ReLU gain) of every Linear weight."""
    return _scoped("kaiming_normal", scope, spec)


@register_variant("init_normal", slot="init", paper="Radford et al. 2019 (GPT-2)")
def init_normal(spec: ModelSpec, std: float = 0.02, scope: str = "weights") -> ModelSpec:
    """N(0, std^2) init of every Linear weight (std a parameter, default 0.02)."""
    return _scoped("normal", scope, spec, std=std)


@register_variant("init_uniform", slot="init")
def init_uniform(spec: ModelSpec, a: float = 0.05, scope: str = "weights") -> ModelSpec:
    """U(-a, a) init of every Linear weight (a a parameter, default 0.05)."""
    return _scoped("uniform", scope, spec, a=a)
