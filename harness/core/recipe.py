"""The training recipe: which optimiser trains which parameters, with which hyper-parameters, and
which auxiliary losses join the task's loss. Variants patch it as they patch the model.

The recipe rides on the spec (``ModelSpec.recipe``), so a variant that changes the optimiser is an
ordinary ``spec -> spec`` patch (``spec.replace(recipe=spec.recipe.replace(optimizer="lion"))``),
composes with model variants, and two variants that set the same recipe field conflict by name
(:func:`modtransfer.core.variant.resolve` counts recipe fields one by one, auxiliary losses name by
name). The baseline recipe is AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101) on every parameter
with the budget's learning rate, betas, weight decay (on matrices only) and schedule:
:meth:`Recipe.to_dict` lists only the fields that differ from it, and a spec leaves the recipe out
of its dict when nothing differs, so the cell ids of every baseline-recipe cell stay what they were.

Fields:

``optimizer``: a name in :data:`OPTIMIZERS` (``adamw``: the baseline).
``options``: that optimiser's own hyper-parameters (each optimiser declares the ones it takes and
    their defaults); the learning rate, betas and weight decay come from the task's budget unless
    an option scales or replaces them.
``scope``: which parameters the optimiser trains, one of :data:`SCOPES`; the parameters outside it
    train with the baseline AdamW (what Muon's authors prescribe for embeddings, heads and gains).
``aux_losses``: ``(name, weight)`` pairs, each a name in :data:`AUX_LOSSES`; the training step adds
    ``weight x value`` to the task's loss (the logged ``train_loss`` stays the task's own).

This module is data and registries only (no torch); the optimisers are built by
:mod:`modtransfer.core.optim`, and the built-in ones registered by ``variants/optimizers.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.registry import Registry

#: Which parameters a recipe's optimiser trains (``Recipe.scope``): ``all`` of them, or ``hidden``:
#: the matrices of the linear maps inside the Transformer stacks (not the embeddings, the output
#: head, the input/output projections of continuous tasks, position tables, norms' gains or biases).
SCOPES: tuple[str, ...] = ("all", "hidden")

#: The slots recipe variants declare (``register_variant(slot=...)``): ``optimizer`` for the
#: optimiser, its options and scope; ``loss`` for auxiliary losses. The report groups recipe
#: variants under these (:func:`recipe_slot`).
RECIPE_SLOTS: tuple[str, ...] = ("optimizer", "loss")

BASELINE_OPTIMIZER = "adamw"

#: name -> ``build(groups, budget, options, device) -> torch.optim.Optimizer``; meta: ``paper``,
#: ``options`` (name -> default), ``scopes`` (the scopes it can train), ``own_schedule`` (it warms up
#: and anneals by itself: the budget's schedule is not applied), ``extra`` (the optional dependency
#: it needs, "" when none), ``unavailable`` (``() -> reason | None``: why it cannot run with the
#: installed packages, e.g. a torch without ``torch.optim.Muon``).
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer")

#: name -> ``make(model) -> term``, where ``term(batch) -> Tensor`` (a scalar) is called in each
#: training step right after the task's loss on that batch; ``make`` may register forward hooks on
#: the model's modules to read what the forward computed. Meta: ``paper``, ``requires`` (task
#: capabilities it needs, as a variant's ``requires``).
AUX_LOSSES: Registry[Callable[..., Any]] = Registry("auxiliary loss")


def register_optimizer(name: str, *, paper: str = "", options: dict[str, Any] | None = None,
                       scopes: tuple[str, ...] = ("all",), own_schedule: bool = False, extra: str = "",
                       unavailable: Callable[[], str | None] | None = None,
                       override: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``build(groups, budget, options, device) -> Optimizer`` as a recipe's optimiser.

    ``groups``: ``[{"params": [...], "weight_decay": wd}, ...]`` (weight decay on matrices only, as
    the baseline); ``options``: the recipe's options over the declared defaults (every key declared).
    """
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"optimizer {name!r}: unknown scope {bad[0]!r}; scopes are {', '.join(SCOPES)}")
    return OPTIMIZERS.register(name, override=override, paper=paper, options=dict(options or {}),
                               scopes=tuple(scopes), own_schedule=own_schedule, extra=extra,
                               unavailable=unavailable)


def register_aux_loss(name: str, *, paper: str = "", requires: tuple[str, ...] = (),
                      override: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``make(model) -> term`` (``term(batch) -> scalar Tensor``) as an auxiliary loss."""
    return AUX_LOSSES.register(name, override=override, paper=paper, requires=frozenset(requires))


def _frozen(value: Any) -> Any:
    """A hashable copy of an option value (lists become tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _pairs(value: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """A mapping (or pairs) as sorted ``(key, value)`` pairs."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list | tuple) and all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
        items = [tuple(p) for p in value]
    else:
        raise UserError(f"Recipe.{what} must be a mapping of name: value, got {value!r}")
    if not all(isinstance(k, str) for k, _ in items):
        raise UserError(f"Recipe.{what}: every key must be a string, got {value!r}")
    return tuple(sorted(((k, _frozen(v)) for k, v in items), key=lambda kv: kv[0]))


@dataclass(frozen=True)
class Recipe:
    """How a cell trains its model, beyond the budget (see the module docstring)."""

    optimizer: str = BASELINE_OPTIMIZER
    options: tuple[tuple[str, Any], ...] = ()
    scope: str = "all"
    aux_losses: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, str) or not self.optimizer:
            raise UserError(f"Recipe.optimizer must be an optimiser's name, got {self.optimizer!r}")
        if self.scope not in SCOPES:
            raise UserError(f"Recipe.scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        object.__setattr__(self, "options", _pairs(self.options, "options"))
        aux = _pairs(self.aux_losses, "aux_losses")
        for name, weight in aux:
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise UserError(f"Recipe.aux_losses[{name!r}]: the weight must be a finite number, got {weight!r}")
        object.__setattr__(self, "aux_losses", tuple((k, float(w)) for k, w in aux))

    @classmethod
    def coerce(cls, value: Any) -> Recipe:
        """A recipe from a recipe or its dict (as :meth:`to_dict` writes it, or a plan's ``spec: recipe:``)."""
        if isinstance(value, Recipe):
            return value
        if isinstance(value, dict):
            unknown = [k for k in value if k not in _FIELDS]
            if unknown:
                raise UserError(f"Recipe: unknown field {unknown[0]!r}{did_you_mean(str(unknown[0]), _FIELDS)}; "
                                f"fields are {', '.join(_FIELDS)}")
            return cls(**value)
        raise UserError(f"ModelSpec.recipe must be a mapping of recipe fields, got {value!r}")

    def replace(self, **changes: Any) -> Recipe:
        unknown = [k for k in changes if k not in _FIELDS]
        if unknown:
            raise UserError(f"Recipe has no field {unknown[0]!r}{did_you_mean(unknown[0], _FIELDS)}")
        return dataclasses.replace(self, **changes)

    def with_aux_loss(self, name: str, weight: float) -> Recipe:
        """This recipe with the auxiliary loss ``name`` at ``weight`` (the others kept)."""
        return self.replace(aux_losses={**dict(self.aux_losses), name: weight})

    @property
    def is_baseline(self) -> bool:
        return self == Recipe()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the baseline recipe (``{}`` for the baseline), JSON-ready."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value != getattr(_BASE, name):
                out[name] = _plain(dict(value)) if name in ("options", "aux_losses") else value
        return out

    def diff(self, other: Recipe) -> list[str]:
        """Names of what differs: fields, with ``aux_losses`` counted per loss (``aux_losses['z_loss']``)."""
        out = [f for f in _FIELDS if f != "aux_losses" and getattr(self, f) != getattr(other, f)]
        mine, theirs = dict(self.aux_losses), dict(other.aux_losses)
        out += [f"aux_losses[{k!r}]" for k in sorted({*mine, *theirs}) if mine.get(k) != theirs.get(k)]
        return out


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON and YAML round-trip)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe))
_BASE = Recipe()


def merge_recipes(base: Recipe, patched: list[Recipe]) -> Recipe:
    """``base`` with each patched recipe's own changes to it (fields, and auxiliary losses by name)."""
    out = base
    for recipe in patched:
        for name in recipe.diff(base):
            if name.startswith("aux_losses["):
                key = name[len("aux_losses['"):-2]
                aux = dict(out.aux_losses)
                if key in dict(recipe.aux_losses):
                    aux[key] = dict(recipe.aux_losses)[key]
                else:
                    aux.pop(key, None)
                out = out.replace(aux_losses=aux)
            else:
                out = out.replace(**{name: getattr(recipe, name)})
    return out


def check_recipe(recipe: Recipe) -> None:
    """Every name in ``recipe`` registered, its options declared by its optimiser, its scope one it can train."""
    entry = OPTIMIZERS.entry(recipe.optimizer)
    declared = entry.meta.get("options", {})
    for key, _ in recipe.options:
        if key not in declared:
            raise UserError(f"optimizer {recipe.optimizer!r} takes no option {key!r}{did_you_mean(key, declared)}; "
                            f"its options: {', '.join(declared) or 'none'}")
    scopes = entry.meta.get("scopes", ("all",))
    if recipe.scope not in scopes:
        raise UserError(f"optimizer {recipe.optimizer!r} cannot train scope {recipe.scope!r}; it trains "
                        f"{', '.join(scopes)}")
    extra = entry.meta.get("extra", "")
    if extra and importlib.util.find_spec(extra) is None:
        raise UserError(f"optimizer {recipe.optimizer!r} needs the {extra} package; install it with "
                        f"pip install 'modtransfer[{extra}]'")
    why = entry.meta.get("unavailable")
    reason = why() if why is not None else None
    if reason:
        raise UserError(f"optimizer {recipe.optimizer!r} cannot run here: {reason}")
    for name, _ in recipe.aux_losses:
        AUX_LOSSES.entry(name)


def aux_requirements(recipe: Recipe) -> frozenset[str]:
    """The task capabilities the recipe's auxiliary losses need."""
    return frozenset().union(*(AUX_LOSSES.entry(n).meta.get("requires", frozenset()) for n, _ in recipe.aux_losses))


def recipe_slot(spec: dict[str, Any], base: dict[str, Any]) -> str | None:
    """The recipe slot a variant's spec dict changes against the baseline's, or None: ``optimizer``
    when its optimiser, options or scope differ, else ``loss`` when its auxiliary losses do."""
    mine, theirs = spec.get("recipe") or {}, base.get("recipe") or {}
    if any(mine.get(k) != theirs.get(k) for k in ("optimizer", "options", "scope")):
        return "optimizer"
    if mine.get("aux_losses") != theirs.get("aux_losses"):
        return "loss"
    return None
