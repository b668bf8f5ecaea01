"""ModelSpec: the whole model as one flat, serialisable dataclass.

Shape fields plus one string per *slot* a modification can change. Strings (not classes)
keep the spec round-tripping through YAML, JSON, SQLite and the W&B config unchanged; the
builder resolves each string in the component registry of its slot
(:func:`modtransfer.core.validate.check_components` checks that every string names one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.recipe import Recipe

#: Where dropout can be applied (``ModelSpec.dropout_at``), in a fixed order:
#: ``embed`` on the stack's input (after the position signal is added), ``attention`` on the
#: attention weights, ``residual`` on each branch's output before it is added, ``ffn`` inside
#: the FFN after the activation, ``final`` after a stack's final norm (T5's dropout at the
#: output of the stack, Raffel et al. 2020, section 2.1).
DROPOUT_SITES: tuple[str, ...] = ("embed", "attention", "residual", "ffn", "final")

#: Values of ``ModelSpec.final_norm``: ``auto`` lets the residual component decide (pre-norm
#: stacks end with a norm, post-norm stacks do not); ``always``/``never`` force it;
#: ``encoder_decoder`` puts one at the end of both stacks of an encoder-decoder only (what
#: ``torch.nn.Transformer`` builds) and none in a lone stack (``nn.TransformerEncoder`` built
#: without ``norm=``).
FINAL_NORMS: tuple[str, ...] = ("auto", "always", "never", "encoder_decoder")

#: Values of ``ModelSpec.init_draws``; what each means: :mod:`modtransfer.core.draws`.
INIT_DRAWS: tuple[str, ...] = ("global", "per_module")

#: The slots a modification can change, in the order ``ls`` groups them.
SLOTS: tuple[str, ...] = (
    "activation", "ffn", "norm", "residual", "position", "attention",
    "embedding", "output", "sharing", "init",
)


@dataclass(frozen=True)
class ModelSpec:
    """A Transformer, described by value.

    ``vocab_size``/``in_features``/``out_features``/``max_len`` are filled in by the task
    (``Task.configure_spec``); everything else comes from the size preset and the variants.
    """

    # shape
    d_model: int = 128
    n_layers: int = 2          # per stack (an encoder-decoder has n_layers + n_layers)
    n_heads: int = 4
    d_head: int = 0            # 0: d_model // n_heads
    d_ff: int = 512
    vocab_size: int = 0        # 0: continuous inputs/outputs (in_features/out_features)
    in_features: int = 0
    out_features: int = 0
    max_len: int = 256
    dropout: float = 0.0
    norm_eps: float = 1e-5
    # slots (names in the component registry of each slot)
    activation: str = "relu"
    ffn: str = "dense"
    norm: str = "layernorm"
    residual: str = "pre"
    position: str = "sinusoidal"
    attention: str = "sdpa"
    embedding: str = "tied"
    output: str = "softmax"
    sharing: str = "none"
    init: str = "default"
    # parameters of slot components
    d_embed: int = 0           # factorised / adaptive embedding inner dimension (0: d_model)
    init_scale: float = 0.0    # std (normal) or bound (uniform); 0: the scheme's default
    n_experts: int = 0         # mixture-of-experts FFN: experts per MoE layer
    moe_every: int = 2         # every k-th layer is an MoE layer
    moe_top_k: int = 1
    aux_loss_weight: float = 0.01
    n_softmaxes: int = 0       # mixture of softmaxes components
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0
    rel_buckets: int = 32
    rel_max_distance: int = 128
    extra: tuple[tuple[str, Any], ...] = field(default=())  # free-form options for plugins
    # implementation profile (``modtransfer.core.implementations``): which baseline built the spec,
    # and the defaults that differ between implementations
    implementation: str = "modtransfer"
    bias: bool = False                # additive biases on the attention and FFN projections
    dropout_at: str = "embed,attention,residual,ffn"   # comma-separated DROPOUT_SITES
    final_norm: str = "auto"          # one of FINAL_NORMS
    clone_layers: bool = False        # every layer of a stack starts as a copy of its first
    #: where the initial draws come from (``modtransfer.core.draws``): ``global`` (one stream in
    #: construction order, the behaviour before this field) or ``per_module`` (common random
    #: numbers: each component's draws depend only on the seed and its place in the model)
    init_draws: str = "global"
    #: how the model trains (optimiser, its options and scope, auxiliary losses): :mod:`modtransfer.core.recipe`
    recipe: Recipe = Recipe()

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe", Recipe.coerce(self.recipe))
        if isinstance(self.adaptive_cutoffs, list):
            object.__setattr__(self, "adaptive_cutoffs", tuple(self.adaptive_cutoffs))
        if isinstance(self.extra, dict):
            object.__setattr__(self, "extra", tuple(sorted(self.extra.items())))
        elif isinstance(self.extra, list):
            object.__setattr__(self, "extra", tuple(tuple(p) for p in self.extra))
        if isinstance(self.dropout_at, str):
            sites = {s.strip() for s in self.dropout_at.split(",") if s.strip()}
            object.__setattr__(self, "dropout_at", ",".join(s for s in DROPOUT_SITES if s in sites))
            unknown = sorted(sites - set(DROPOUT_SITES))
            if unknown:
                raise UserError(f"ModelSpec.dropout_at: unknown site {unknown[0]!r}; sites are {', '.join(DROPOUT_SITES)}")
        self._check_types()
        self._check_values()

    # -- validation -------------------------------------------------------------------
    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise UserError(f"ModelSpec.{f.name} must be an integer, got {value!r}")
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise UserError(f"ModelSpec.{f.name} must be a number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
            if kind == "str" and not isinstance(value, str):
                raise UserError(f"ModelSpec.{f.name} must be a string, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise UserError(f"ModelSpec.{f.name} must be true or false, got {value!r}")
        if not all(isinstance(c, int) and c > 0 for c in self.adaptive_cutoffs):
            raise UserError(f"ModelSpec.adaptive_cutoffs must be positive integers, got {self.adaptive_cutoffs!r}")

    def _check_values(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_len", "moe_every", "moe_top_k",
                     "rel_buckets", "rel_max_distance"):
            if getattr(self, name) < 1:
                raise UserError(f"ModelSpec.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("d_head", "vocab_size", "in_features", "out_features", "d_embed", "n_experts",
                     "n_softmaxes"):
            if getattr(self, name) < 0:
                raise UserError(f"ModelSpec.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"ModelSpec.dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0 or self.init_scale < 0 or self.aux_loss_weight < 0 or self.adaptive_div <= 1:
            raise UserError("ModelSpec: norm_eps must be > 0, init_scale and aux_loss_weight >= 0, adaptive_div > 1")
        if self.d_head == 0 and self.d_model % self.n_heads:
            raise UserError(
                f"ModelSpec: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "change one of them or set d_head"
            )
        if self.moe_top_k > max(self.n_experts, 1):
            raise UserError(f"ModelSpec: moe_top_k={self.moe_top_k} exceeds n_experts={self.n_experts}")
        if self.final_norm not in FINAL_NORMS:
            raise UserError(f"ModelSpec.final_norm must be one of {', '.join(FINAL_NORMS)}, got {self.final_norm!r}")
        if self.init_draws not in INIT_DRAWS:
            raise UserError(f"ModelSpec.init_draws must be one of {', '.join(INIT_DRAWS)}, got {self.init_draws!r}")

    # -- derived ----------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def embed_dim(self) -> int:
        return self.d_embed or self.d_model

    def dropout_for(self, site: str) -> float:
        """The dropout rate at ``site`` (one of :data:`DROPOUT_SITES`): ``dropout`` or 0."""
        if site not in DROPOUT_SITES:
            raise ValueError(f"unknown dropout site {site!r}; sites are {DROPOUT_SITES}")
        return self.dropout if site in self.dropout_at.split(",") else 0.0

    def option(self, key: str, default: Any = None) -> Any:
        """A plugin's free-form option from ``extra``."""
        return dict(self.extra).get(key, default)

    def with_options(self, **options: Any) -> ModelSpec:
        """This spec with ``options`` set in ``extra``, the other keys kept.

        ``extra`` is shared by every variant of a combination, keyed per option: two variants
        setting different keys compose, two setting the same key conflict (checked by
        :func:`modtransfer.core.variant.resolve`, which names both). Prefix keys with the plugin's
        name (``layerscale_init``) so they stay distinct.
        """
        merged = {**dict(self.extra), **options}
        return dataclasses.replace(self, extra=tuple(sorted(merged.items(), key=lambda kv: kv[0])))

    # -- (de)serialisation ------------------------------------------------------------
    def replace(self, **changes: Any) -> ModelSpec:
        unknown = [k for k in changes if k not in _FIELD_NAMES]
        if unknown:
            raise UserError(f"ModelSpec has no field {unknown[0]!r}{did_you_mean(unknown[0], _FIELD_NAMES)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field, except the :data:`LATE_FIELDS` left at their defaults.

        Leaving those out keeps the dict (and with it the digest and every cell id) of a spec
        written before they existed unchanged; ``from_dict`` fills them back in.
        """
        d = dataclasses.asdict(self)
        d["adaptive_cutoffs"] = list(self.adaptive_cutoffs)
        d["extra"] = dict(self.extra)
        d["recipe"] = self.recipe.to_dict()   # only what differs from the baseline recipe ({} at it)
        for name in LATE_FIELDS:
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "ModelSpec") -> ModelSpec:
        if not isinstance(data, dict):
            raise UserError(f"{where} must be a mapping of ModelSpec fields, got {type(data).__name__}")
        for key in data:
            if key not in _FIELD_NAMES:
                raise UserError(f"{where}: unknown field {key!r}{did_you_mean(str(key), _FIELD_NAMES)}")
        return cls(**data)

    def diff(self, other: ModelSpec) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{name: (self_value, other_value)}``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    def digest(self) -> str:
        """A stable hash of the spec's values (independent of field order)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_FIELD_NAMES = tuple(f.name for f in fields(ModelSpec))
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(ModelSpec) if f.default is not dataclasses.MISSING}
_DEFAULTS["recipe"] = {}   # the baseline recipe's dict

#: Fields added after the first stores were written: ``to_dict`` omits them at their defaults (the
#: behaviour before they existed), so a spec that keeps them there has the digest and cell ids it
#: had then; ``init_draws`` is ``global`` by default and ``per_module`` in the ``modtransfer``,
#: ``t5`` and ``gpt2`` profiles, so their cells (whose initial weights changed) have new ids.
LATE_FIELDS: tuple[str, ...] = ("implementation", "bias", "dropout_at", "final_norm", "clone_layers", "init_draws",
                                 "recipe")

#: Slots whose components build the projections ``ModelSpec.bias`` puts biases on.
BIAS_SLOTS: tuple[str, ...] = ("attention", "ffn")


def honours_bias(component: Any, meta: dict[str, Any] | None = None) -> bool:
    """Whether a component builds its projections with ``bias=spec.bias``.

    A component says so with a class or function attribute ``honours_bias = True`` or with
    ``register_component(..., honours_bias=True)``.
    """
    return bool(getattr(component, "honours_bias", False) or (meta or {}).get("honours_bias", False))
