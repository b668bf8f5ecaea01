"""Implementations: applying a profile, and whether a variant can run on it.

Profiles and their registry live in :mod:`modtransfer.core.profiles` (re-exported here); this
module applies one to a size preset's spec and tells whether a variant can run on it. Variants
patch whichever profile a cell uses, so "does the gain transfer across implementations?"
(Narang et al. 2021, arXiv 2102.11972) is an axis like tasks and seeds.

Selecting one from code::

    base = apply_implementation("torch", size_preset("tiny"))          # the profile's baseline
    rv, reason = resolve_on("torch", "swiglu", size_preset("tiny"))    # a variant on it, or why not

A variant that cannot run on a profile (it fails to resolve or build there, although it does on
``modtransfer``; or it only sets what the profile already has) is reported by
:func:`implementation_conflict` with a reason, so a plan can skip it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modtransfer.core.errors import UserError
from modtransfer.core.profiles import (
    DEFAULT_IMPLEMENTATION,
    IMPLEMENTATIONS,
    PROFILE_FIELDS,
    SHAPE_FIELDS,
)
from modtransfer.core.spec import ModelSpec
from modtransfer.core.validate import check_components
from modtransfer.core.variant import BASELINE, VARIANTS, ResolvedVariant, parse_variant, resolve


def apply_implementation(name: str, size_spec: ModelSpec, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """The baseline spec of implementation ``name`` at the size ``size_spec`` describes.

    ``size_spec`` is a size preset's spec (implementation ``modtransfer``). ``overrides`` (a
    plan's ``spec:`` mapping) are applied after the profile, so a user can still change one of
    its defaults on purpose. Raises :class:`UserError` for an unknown name, a profile that sets
    a size or a field without a source, or overrides that change the implementation.
    """
    entry = IMPLEMENTATIONS.entry(name)
    if size_spec.implementation not in (DEFAULT_IMPLEMENTATION, name):
        raise UserError(
            f"implementation {name!r} applies to a size preset's spec, but this spec was built by implementation "
            f"{size_spec.implementation!r}"
        )
    out = entry.obj(size_spec)
    if not isinstance(out, ModelSpec):
        raise UserError(f"implementation {name!r} returned {type(out).__name__}, not a ModelSpec")
    changed = set(out.diff(size_spec)) - {"implementation"}
    sized = sorted(changed & SHAPE_FIELDS)
    if sized:
        raise UserError(f"implementation {name!r} changes ModelSpec.{sized[0]}: a profile sets defaults, "
                        "sizes come from the size preset and the task")
    unsourced = sorted(changed - set(entry.meta["sources"]))
    if unsourced:
        raise UserError(f"implementation {name!r} sets ModelSpec.{unsourced[0]} without a source; "
                        "give one in register_implementation(sources=...)")
    out = out.replace(implementation=name)
    if overrides:
        if "implementation" in overrides and overrides["implementation"] != name:
            raise UserError("spec.implementation cannot be overridden; choose the implementation instead")
        out = out.replace(**dict(overrides))
    check_components(out)
    return out


def profile_defaults(name: str, size_spec: ModelSpec | None = None) -> list[tuple[str, Any, str]]:
    """``(field, value, source)`` for every field the profile decides (fields it sets first)."""
    entry = IMPLEMENTATIONS.entry(name)
    spec = apply_implementation(name, size_spec or ModelSpec())
    cited: dict[str, str] = entry.meta["sources"]
    names = list(cited) + [f for f in PROFILE_FIELDS if f not in cited]
    return [(f, getattr(spec, f), cited.get(f, "-")) for f in names]


# -- conflicts --------------------------------------------------------------------------------
def _touched(parts: list[Any], spec: ModelSpec) -> set[str]:
    """Fields a variant's parts change when applied to the modtransfer defaults at ``spec``'s shape."""
    neutral = ModelSpec(**{f: getattr(spec, f) for f in SHAPE_FIELDS})
    out = neutral
    for part in parts:
        out = VARIANTS.get(part.name)(out, **dict(part.params))
    return set(out.diff(neutral))


def _is_noop(impl: str, rv: ResolvedVariant, base: ModelSpec | None) -> str | None:
    """Why the variant is the profile's own baseline, or None."""
    spec = rv.spec
    if base is not None and base.implementation == impl:
        if spec != base:
            return None
        try:
            touched = _touched(rv.parts, spec)
        except Exception:  # a variant that cannot run on the neutral spec: treat as a change
            return None
    else:  # no base: the variant only sets fields the profile sets, to the profile's values
        try:
            touched = _touched(rv.parts, spec)
            neutral = ModelSpec(**{f: getattr(spec, f) for f in SHAPE_FIELDS})
            profiled = IMPLEMENTATIONS.get(impl)(neutral)
        except Exception:
            return None
        set_by_profile = set(profiled.diff(neutral))
        if not touched or not touched <= set_by_profile or any(getattr(spec, f) != getattr(profiled, f) for f in touched):
            return None
    if not touched:  # a no-op on every implementation (``sinusoidal`` on modtransfer): not a conflict
        return None
    shown = ", ".join(f"{f}={getattr(spec, f)!r}" for f in sorted(touched))
    verb = "is" if len(touched) == 1 else "are"
    return f"equals the {impl!r} baseline: {shown} {verb} already that implementation's default"


def _build_problem(rv: ResolvedVariant) -> str | None:
    """Build the variant's model on ``meta`` (nothing allocated) and report what fails."""
    import torch  # only here: importing the registry (``ls``, the reports) must not pay for torch

    from modtransfer.core.model import Transformer

    spec = rv.spec
    if spec.vocab_size == 0 and (spec.in_features == 0 or spec.out_features == 0):
        spec = spec.replace(vocab_size=64)
    topology = "encoder_decoder" if "encoder_decoder" in rv.requires else "decoder"
    try:
        with torch.device("meta"):
            Transformer(spec, topology)
    except (UserError, ValueError, RuntimeError, TypeError) as exc:
        return f"cannot be built on implementation {spec.implementation!r}: {exc}"
    return None


def implementation_conflict(
    impl_name: str, variant_resolved: ResolvedVariant | str, base: ModelSpec | None = None,
) -> str | None:
    """Why a variant cannot run on implementation ``impl_name`` (None when it can).

    ``variant_resolved``: the variant resolved against the profile's baseline (``resolve(expr,
    apply_implementation(impl_name, size_spec))``), or the variant expression, then resolved
    here against ``base`` (a size spec or the profile's baseline; required for a string).
    ``base``, the profile's baseline, makes the "nothing changes" test exact; without it a
    variant counts as unchanged when every field it sets is one the profile sets, to the same
    value.

    Reasons: the variant does not resolve on the profile (e.g. linear attention with T5's
    relative bias, a component without bias terms on a profile with biases); its model cannot
    be built there (e.g. a mixture of experts on a profile that clones its layers); it changes
    ``implementation``; or it equals the profile's baseline (``post_ln`` on ``torch``: the
    cell would train the baseline again). On ``modtransfer``, the zoo's reference, variants that
    equal the baseline (``sinusoidal``) are not reported, as before profiles existed.
    """
    IMPLEMENTATIONS.entry(impl_name)
    if isinstance(variant_resolved, str):
        if base is None:
            raise ValueError("implementation_conflict: a variant expression needs base=")
        profiled = base if base.implementation == impl_name else apply_implementation(impl_name, base)
        rv, reason = _resolve_or_reason(impl_name, variant_resolved, profiled, base)
        if rv is None:
            return reason
        base = profiled
    else:
        rv = variant_resolved
    if rv.spec.implementation != impl_name:
        return (f"variant {rv.name!r} changes ModelSpec.implementation to {rv.spec.implementation!r}; "
                f"a variant patches implementation {impl_name!r}, it cannot replace it")
    if rv.name == BASELINE:
        return None
    if impl_name != DEFAULT_IMPLEMENTATION:
        reason = _is_noop(impl_name, rv, base)
        if reason is not None:
            return reason
    return _build_problem(rv)


def _resolve_or_reason(impl: str, expr: str, profiled: ModelSpec,
                       size_spec: ModelSpec) -> tuple[ResolvedVariant | None, str | None]:
    """Resolve on the profile; an error there that ``modtransfer`` does not have is a reason."""
    parse_variant(expr)  # unknown names and syntax are the user's mistakes, raised as such
    try:
        return resolve(expr, profiled), None
    except UserError as exc:
        error = exc
    if size_spec.implementation == DEFAULT_IMPLEMENTATION:
        resolve(expr, size_spec)  # raises when the variant fails on the reference too
    return None, f"cannot be applied to implementation {impl!r}: {error}"


def resolve_on(
    impl_name: str, expr: str, size_spec: ModelSpec, overrides: Mapping[str, Any] | None = None,
) -> tuple[ResolvedVariant | None, str | None]:
    """Resolve a variant on an implementation: ``(resolved, None)`` or ``(resolved | None, reason)``.

    ``size_spec`` (a size preset's spec) and ``overrides`` (a plan's ``spec:``) as in
    :func:`apply_implementation`. Errors the variant has on ``modtransfer`` too (unknown
    names, two variants changing one field, bad parameters) are raised, not returned.
    """
    base = apply_implementation(impl_name, size_spec, overrides)
    reference = size_spec.replace(**dict(overrides)) if overrides else size_spec
    rv, reason = _resolve_or_reason(impl_name, expr, base, reference)
    if rv is None:
        return None, reason
    return rv, implementation_conflict(impl_name, rv, base=base)


