"""ModelSpec: the whole model as one flat, serialisable dataclass.

Shape fields plus one string per *slot* a modification can change. Strings (not classes)
keep the spec round-tripping through YAML, JSON, SQLite and the W&B config unchanged; the
builder resolves each string in the component registry of its slot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UserError, did_you_mean

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

    def __post_init__(self) -> None:
        if isinstance(self.adaptive_cutoffs, list):
            object.__setattr__(self, "adaptive_cutoffs", tuple(self.adaptive_cutoffs))
        if isinstance(self.extra, dict):
            object.__setattr__(self, "extra", tuple(sorted(self.extra.items())))
        elif isinstance(self.extra, list):
            object.__setattr__(self, "extra", tuple(tuple(p) for p in self.extra))
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

    def check_components(self) -> None:
        """Every slot string must name a registered component of its slot."""
        from .components import COMPONENTS, ensure_builtin_components

        ensure_builtin_components()
        for slot in SLOTS:
            obj = COMPONENTS[slot].entry(getattr(self, slot)).obj
            check = getattr(obj, "check_spec", None)
            if callable(check):  # a component may reject combinations before anything is built
                check(self)

    # -- derived ----------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def embed_dim(self) -> int:
        return self.d_embed or self.d_model

    def option(self, key: str, default: Any = None) -> Any:
        """A plugin's free-form option from ``extra``."""
        return dict(self.extra).get(key, default)

    # -- (de)serialisation ------------------------------------------------------------
    def replace(self, **changes: Any) -> ModelSpec:
        unknown = [k for k in changes if k not in _FIELD_NAMES]
        if unknown:
            raise UserError(f"ModelSpec has no field {unknown[0]!r}{did_you_mean(unknown[0], _FIELD_NAMES)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adaptive_cutoffs"] = list(self.adaptive_cutoffs)
        d["extra"] = dict(self.extra)
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
