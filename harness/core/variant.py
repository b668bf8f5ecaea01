"""Variants: named, documented patches of a :class:`ModelSpec`.

A variant is a function ``spec -> spec`` (optionally with keyword parameters, written
``init_normal(std=0.02)`` in a plan), registered with :func:`register_variant`; one that only
selects components (sets spec fields to values) is written with :func:`selector` instead. Variants compose with ``+``; two variants that change
the same spec field conflict, and the error names both, before anything trains. The free-form
options in ``ModelSpec.extra`` count key by key, so variants keeping different options there
compose.

The hash of the plugin code a variant uses is :func:`modtransfer.core.digest.code_digest`.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modtransfer.core.errors import ConflictError, UserError
from modtransfer.core.recipe import RECIPE_SLOTS, aux_requirements, check_recipe, merge_recipes
from modtransfer.core.registry import Registry, ensure_builtins
from modtransfer.core.spec import SLOTS, ModelSpec
from modtransfer.core.validate import check_components

VARIANTS: Registry[Callable[..., ModelSpec]] = Registry("variant")

#: Capabilities a task can offer and a variant can require: ``vocab`` (token inputs and a
#: softmax output over a vocabulary), ``padding`` (batches carry padded positions, given to the
#: model as masks), ``decoder`` / ``encoder`` / ``encoder_decoder`` (the task's topology), and
#: ``causal`` (the model has a causal decoder stack: decoder and encoder-decoder tasks).
CAPABILITIES = ("vocab", "padding", "decoder", "encoder", "encoder_decoder", "causal")
MATCHES = (None, "params", "flops")

BASELINE = "baseline"


def register_variant(
    name: str,
    *,
    slot: str,
    paper: str = "",
    description: str | None = None,
    matches: str | None = None,
    requires: Iterable[str] = (),
    requires_any: Iterable[str] = (),
    override: bool = False,
) -> Callable[[Callable[..., ModelSpec]], Callable[..., ModelSpec]]:
    """Register ``fn(spec, **params) -> spec`` as a variant.

    ``slot``: the slot it modifies (``ls`` groups by it; ``"shape"`` for width/depth; ``"optimizer"``
    or ``"loss"`` for a patch of the training recipe, :mod:`modtransfer.core.recipe`).
    ``matches``: ``"params"`` or ``"flops"`` when the variant re-balances width or depth to stay
    matched to the baseline (tested to within 2% at every size preset).
    ``requires``: task capabilities all needed (e.g. ``{"vocab"}`` for an output softmax);
    ``requires_any``: at least one of these (e.g. ``{"decoder", "encoder_decoder"}``).
    ``override``: replace a variant of the same name on purpose (a plugin re-defining a built-in).
    """
    if slot not in SLOTS + ("shape", "baseline") + RECIPE_SLOTS:
        raise ValueError(f"variant {name!r}: unknown slot {slot!r}; use one of {SLOTS + ('shape',) + RECIPE_SLOTS}")
    if matches not in MATCHES:
        raise ValueError(f"variant {name!r}: matches must be one of {MATCHES}")
    for cap in (*requires, *requires_any):
        if cap not in CAPABILITIES:
            raise ValueError(f"variant {name!r}: unknown capability {cap!r}; use {CAPABILITIES}")

    def decorator(fn: Callable[..., ModelSpec]) -> Callable[..., ModelSpec]:
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        VARIANTS.register(
            name, fn, override=override, slot=slot, paper=paper, description=doc.strip(), matches=matches,
            requires=frozenset(requires), requires_any=frozenset(requires_any),
        )
        return fn

    return decorator


def selector(
    name: str,
    *,
    slot: str,
    description: str,
    paper: str = "",
    matches: str | None = None,
    requires: Iterable[str] = (),
    requires_any: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
    override: bool = False,
    **fields: Any,
) -> Callable[[ModelSpec], ModelSpec]:
    """Register a variant that only sets spec fields, and return its function.

    The idiom for every variant whose whole effect is choosing components::

        selector("gelu", slot="activation", paper="Hendrycks & Gimpel 2016, arXiv 1606.08415",
                 description="FFN activation GeLU(x) = x * Phi(x) instead of ReLU.", activation="gelu")

    ``fields``: :class:`ModelSpec` fields and their values (``activation="gelu"``); a value that is
    callable is computed from the incoming spec (``d_ff=gated_width``, a width that keeps the
    parameter count). ``options``: keys of ``ModelSpec.extra`` to set the same way (a plugin
    component's option, ``{"stack": "funnel"}``). Callables all read the incoming spec, not one
    another's results. ``description``: the one line ``ls`` shows (a decorated variant takes it
    from its docstring). The other keywords are :func:`register_variant`'s. A selector takes no
    parameters; a variant with parameters (``init_normal(std=...)``) or with logic of its own is a
    function decorated with :func:`register_variant`.
    """
    known = {f.name for f in dataclasses.fields(ModelSpec)} - {"extra"}
    for key in fields:
        if key not in known:
            hint = "; set extra options with options={...}" if key == "extra" else ""
            raise ValueError(f"selector {name!r}: ModelSpec has no field {key!r}{hint}")
    if not fields and not options:
        raise ValueError(f"selector {name!r}: name at least one field (activation='gelu') or option to set")
    if not description.strip():
        raise ValueError(f"selector {name!r}: give a one-line description")
    chosen, opts = dict(fields), dict(options or {})

    def select(spec: ModelSpec) -> ModelSpec:
        out = spec.replace(**{k: v(spec) if callable(v) else v for k, v in chosen.items()})
        if opts:
            out = out.with_options(**{k: v(spec) if callable(v) else v for k, v in opts.items()})
        return out

    # named after the variant and owned by the module that called (a plugin's selector is the plugin's)
    select.__name__ = select.__qualname__ = re.sub(r"\W", "_", name)
    select.__module__ = sys._getframe(1).f_globals.get("__name__", select.__module__)
    select.__doc__ = description
    return register_variant(name, slot=slot, paper=paper, description=description, matches=matches,
                            requires=requires, requires_any=requires_any, override=override)(select)


@register_variant(BASELINE, slot="baseline", description="the reference model every variant is compared with")
def baseline(spec: ModelSpec) -> ModelSpec:
    return spec


# -- parsing "a+b(k=v)" ----------------------------------------------------------------
_PART = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\((.*)\))?\s*$", re.S)


@dataclass(frozen=True)
class VariantPart:
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v!r}" for k, v in self.params) + ")"


def _split_plus(expr: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "+" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_variant(expr: str) -> list[VariantPart]:
    """``"swiglu+init_normal(std=0.02)"`` -> parts; names are checked against the registry."""
    ensure_builtins()
    if not isinstance(expr, str) or not expr.strip():
        raise UserError(f"a variant must be a non-empty string, got {expr!r}")
    parts: list[VariantPart] = []
    for raw in _split_plus(expr):
        m = _PART.match(raw)
        if not m:
            raise UserError(f"cannot parse variant {raw.strip()!r} in {expr!r}; write name or name(key=value)")
        name, arglist = m.group(1), m.group(2)
        VARIANTS.entry(name)
        params: list[tuple[str, Any]] = []
        if arglist and arglist.strip():
            try:
                call = ast.parse(f"f({arglist})", mode="eval").body
                assert isinstance(call, ast.Call) and not call.args
                # a bare word is a string: scope=all is scope="all"
                params = [(kw.arg, kw.value.id if isinstance(kw.value, ast.Name) else ast.literal_eval(kw.value))  # type: ignore[misc]
                          for kw in call.keywords]
            except (SyntaxError, ValueError, AssertionError):
                raise UserError(
                    f"cannot parse the parameters of variant {raw.strip()!r}; write name(key=value, ...) with literal values"
                ) from None
        parts.append(VariantPart(name, tuple(sorted(params))))
    names = [p.name for p in parts]
    if len(parts) > 1 and BASELINE in names:
        raise UserError(f"variant {expr!r}: 'baseline' cannot be combined with other variants")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"variant {expr!r} names {sorted(dup)[0]!r} twice")
    return parts


def canonical(expr: str) -> str:
    """A normal form of a variant expression (parameters sorted, no spaces)."""
    return "+".join(str(p) for p in parse_variant(expr))


@dataclass
class ResolvedVariant:
    """A variant expression applied to a baseline spec."""

    name: str
    spec: ModelSpec
    parts: list[VariantPart]
    slots: list[str]
    requires: frozenset[str] = field(default_factory=frozenset)
    requires_any: list[frozenset[str]] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    papers: list[str] = field(default_factory=list)

    def missing(self, capabilities: Iterable[str]) -> str | None:
        """Why this variant cannot run on a task with ``capabilities`` (None when it can)."""
        caps = set(capabilities)
        lacking = sorted(self.requires - caps)
        if lacking:
            return f"needs a task with {', '.join(lacking)}"
        for group in self.requires_any:
            if not group & caps:
                return f"needs a task with one of {', '.join(sorted(group))}"
        return None


def _apply(part: VariantPart, spec: ModelSpec) -> ModelSpec:
    fn = VARIANTS.get(part.name)
    try:
        out = fn(spec, **dict(part.params))
    except TypeError as exc:
        raise UserError(f"variant {part}: {exc}") from None
    if not isinstance(out, ModelSpec):
        raise UserError(f"variant {part.name!r} returned {type(out).__name__}, not a ModelSpec")
    return out


def _extra_changes(before: ModelSpec, after: ModelSpec) -> tuple[dict[str, Any], set[str]]:
    """Keys of ``extra`` a patch set (to a new value) and keys it removed."""
    old, new = dict(before.extra), dict(after.extra)
    changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
    return changed, {k for k in old if k not in new}


def resolve(expr: str, base: ModelSpec) -> ResolvedVariant:
    """Apply a variant expression to ``base``, rejecting parts that patch the same field.

    ``extra`` counts per key: variants setting different keys of it compose (each keeps the
    others' keys, whatever it wrote), two setting the same key conflict; so does the recipe, per
    field (auxiliary losses per name).
    """
    parts = parse_variant(expr)
    touched: dict[str, str] = {}
    deltas: list[tuple[dict[str, Any], set[str]]] = []
    recipes = []   # each part's recipe, as it patches the baseline's
    for part in parts:
        out = _apply(part, base)
        recipes.append(out.recipe)
        names = [f for f in out.diff(base) if f not in ("extra", "recipe")]
        names += [f"recipe.{f}" for f in out.recipe.diff(base.recipe)]
        changed, removed = _extra_changes(base, out)
        deltas.append((changed, removed))
        names += [f"extra[{k!r}]" for k in sorted({*changed, *removed})]
        for fname in names:
            if fname in touched:
                raise ConflictError(
                    f"variants {touched[fname]!r} and {str(part)!r} both change ModelSpec.{fname}; "
                    "they cannot be combined"
                )
            touched[fname] = str(part)
    spec = base
    extra = dict(base.extra)
    for part, (changed, removed) in zip(parts, deltas, strict=True):
        # each part's own keys (as it sets them on the baseline), whatever it wrote over the others'
        extra = {k: v for k, v in extra.items() if k not in removed} | changed
        out = _apply(part, spec)
        if dict(out.extra) != extra:
            out = out.replace(extra=tuple(sorted(extra.items(), key=lambda kv: kv[0])))
        spec = out
    spec = spec.replace(recipe=merge_recipes(base.recipe, recipes))  # each part's own recipe fields
    check_components(spec)
    if not spec.recipe.is_baseline:
        check_recipe(spec.recipe)
    metas = [VARIANTS.entry(p.name).meta for p in parts]
    return ResolvedVariant(
        name="+".join(str(p) for p in parts),
        spec=spec,
        parts=parts,
        slots=[m["slot"] for m in metas],
        requires=frozenset().union(*(m["requires"] for m in metas), aux_requirements(spec.recipe)),
        requires_any=[m["requires_any"] for m in metas if m["requires_any"]],
        matches=[m["matches"] for m in metas if m["matches"]],
        papers=[m["paper"] for m in metas if m["paper"]],
    )
