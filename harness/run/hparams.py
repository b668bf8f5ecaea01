"""A plan's hyper-parameter settings: axes crossed into rows, or rows listed (with ``cross`` grids among them).

Keys are budget fields, ModelSpec fields (not those the task sets; ``init_draws`` among them) or
``init`` (an init scheme, applied as its ``init_*`` variant on top of every variant that keeps the
baseline's init).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import Budget
from modtransfer.core.variant import canonical

INIT_AXIS = "init"  # a hyper-parameter axis over initialisation schemes (init_* variants)
#: ModelSpec fields the task sets (never an axis).
TASK_SET_FIELDS = ("vocab_size", "in_features", "out_features", "max_len")
#: Fields ``ModelSpec.to_dict`` leaves out at their defaults that may still be an axis:
#: ``init_draws: [global, per_module]`` measures what common random numbers buy (modtransfer.core.draws).
EXTRA_SPEC_AXES = ("init_draws",)


def hparam_rows(hparams: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """The settings of a plan's ``hparams``: the cross product of axes, or the explicit rows as given.

    In a list of rows, an item ``{cross: {axis: [values], ...}}`` stands for the rows of that grid.

    A key may be a budget field (``lr``, ``steps``, ...), a ModelSpec field (``n_layers``,
    ``d_model``, ``dropout``, ...) or ``init`` (an init scheme applied to every variant).
    """
    budget_fields = set(Budget().to_dict())
    spec_fields = {f for f in ModelSpec().to_dict() if f not in TASK_SET_FIELDS} | set(EXTRA_SPEC_AXES)
    allowed = budget_fields | spec_fields | {INIT_AXIS}

    def check_key(where: str, key: Any) -> None:
        if key not in allowed:
            raise UserError(f"{where}: {key!r} is not a budget field, a spec field or 'init'"
                            f"{did_you_mean(str(key), allowed)}")
        if key in budget_fields and key in spec_fields:  # pragma: no cover - the two sets are disjoint today
            raise UserError(f"{where}: {key!r} is ambiguous")

    def check_init(where: str, value: Any) -> None:
        if not isinstance(value, str):
            raise UserError(f"{where} values are init scheme names like xavier_uniform or 'normal(std=0.02)', "
                            f"got {value!r}")
        if value != "default":
            canonical(init_expr(value))

    if isinstance(hparams, list):
        if not hparams:
            raise UserError("plan.hparams is an empty list; give rows like [{lr: 1.0e-3}, {lr: 1.0e-4, n_layers: 2}]")
        rows = []
        for i, row in enumerate(hparams):
            if isinstance(row, dict) and set(row) == {"cross"}:   # {cross: {axis: [values]}}: a grid among rows
                if not isinstance(row["cross"], dict) or not row["cross"]:
                    raise UserError(f"plan.hparams[{i}].cross must map axes to lists of values")
                rows.extend(hparam_rows(row["cross"]))
                continue
            if not isinstance(row, dict) or not row:
                raise UserError(f"plan.hparams[{i}] must be a mapping like {{lr: 1.0e-3, n_layers: 2}}, got {row!r}")
            for key, value in row.items():
                check_key(f"plan.hparams[{i}]", key)
                if key == INIT_AXIS:
                    check_init(f"plan.hparams[{i}].init", value)
            rows.append(dict(row))
        if len({json.dumps(r, sort_keys=True) for r in rows}) != len(rows):
            raise UserError("plan.hparams lists the same row twice")
        return rows
    for key, values in hparams.items():
        check_key("plan.hparams", key)
        if not isinstance(values, list) or not values:
            raise UserError(f"plan.hparams.{key} must be a non-empty list of values, got {values!r}")
        if key == INIT_AXIS:
            for value in values:
                check_init("plan.hparams.init", value)
    axes = sorted(hparams)
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*(hparams[a] for a in axes))]



def init_expr(value: str) -> str:
    """``xavier_uniform`` or ``init_xavier_uniform`` -> the init variant expression."""
    return value if value.startswith("init_") else f"init_{value}"
