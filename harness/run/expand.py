"""A validated plan's cells: sizes x implementations x tasks x variants x settings x seeds.

Each variant is resolved on the baseline of each implementation and size (cached per setting),
a variant that needs a capability the task lacks, or that an implementation cannot carry, is
recorded in ``plan.skipped`` with the reason, and the cells are put seed-major
(:func:`modtransfer.run.plan_types.seed_major`).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from modtransfer.core.digest import code_digest
from modtransfer.core.errors import UserError
from modtransfer.core.sizes import size_preset
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS, Budget, Task
from modtransfer.core.variant import resolve
from modtransfer.run.hparams import EXTRA_SPEC_AXES, INIT_AXIS, hparam_rows, init_expr
from modtransfer.run.plan_types import Cell, Plan, seed_major

SPEC_FIELDS = frozenset(ModelSpec().to_dict()) | frozenset(EXTRA_SPEC_AXES)
BUDGET_FIELDS = frozenset(Budget().to_dict())


class _Expander:
    """The caches of one expansion: variants resolved per (size, implementation, setting), code digests."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._resolved: dict[tuple[str, str, str, str], tuple[Any, str | None]] = {}
        self._digests: dict[tuple[str, str, str], str] = {}

    def variant_on(self, vname: str, size: str, impl: str, spec_part: dict[str, Any]) -> tuple[Any, str | None]:
        """(the variant resolved on the implementation's baseline at this size and setting, why it cannot run)."""
        from modtransfer.core.implementations import resolve_on

        key = (vname, size, impl, json.dumps(spec_part, sort_keys=True))
        if key not in self._resolved:
            overrides = {**self.plan.spec_overrides, **spec_part}
            try:
                self._resolved[key] = resolve_on(impl, vname, size_preset(size), overrides or None)
            except UserError as exc:
                raise UserError(f"plan variant {vname!r} on {impl} with {spec_part or 'the plan spec'}: {exc}") from None
        return self._resolved[key]

    def digest(self, vname: str, spec: ModelSpec, tname: str) -> str:
        """The plugin-code digest of a cell's variant (computed once per variant, spec and task)."""
        key = (vname, spec.digest(), tname)
        if key not in self._digests:
            self._digests[key] = code_digest(vname, spec, task=tname)
        return self._digests[key]

    def skip(self, vname: str, tname: str, reason: str) -> None:
        entry = {"variant": vname, "task": tname, "reason": reason}
        if entry not in self.plan.skipped:
            self.plan.skipped.append(entry)

    def setting(self, vname: str, tname: str, size: str, impl: str, hp: dict[str, Any]) -> ModelSpec | None:
        """The spec of a variant at one setting, or None (recorded as skipped) when it cannot run there."""
        spec_part = {k: v for k, v in hp.items() if k in SPEC_FIELDS and k != INIT_AXIS}
        rv, why = self.variant_on(vname, size, impl, spec_part)
        if why:
            self.skip(vname, tname, f"on implementation {impl}: {why}")
            return None
        init = hp.get(INIT_AXIS, "default")
        if init == "default":
            return rv.spec
        base_now = self.variant_on("baseline", size, impl, spec_part)[0].spec
        if rv.spec.init != base_now.init or rv.spec.init_scale != base_now.init_scale:
            self.plan.skipped.append({"variant": vname, "task": tname,
                                      "reason": f"sets its own initialisation (hparams init={init})"})
            return None
        return resolve(init_expr(init), rv.spec).spec

    def cells(self, size: str, impl: str, tname: str, task: Task, vname: str, rows: list[dict[str, Any]]) -> None:
        """Append the cells of one variant on one task at one size and implementation (every setting and seed)."""
        plan = self.plan
        try:
            budget = plan.task_budget_for(task)
        except UserError as exc:
            raise UserError(f"plan.task_budget.{tname}: {exc}") from None
        reason = plan.resolved[vname].missing(task.capabilities)
        if reason:
            if size == (plan.sizes or [plan.size])[0]:
                plan.skipped.append({"variant": vname, "task": tname, "reason": reason})
            return
        for hp in rows:
            try:
                cell_budget = budget.replace(**{k: v for k, v in hp.items() if k in BUDGET_FIELDS})
                if plan.tuning is not None and not cell_budget.test_batches:   # selection on val, report on test
                    cell_budget = cell_budget.replace(test_batches=cell_budget.eval_batches)
            except UserError as exc:
                raise UserError(f"plan.hparams: {exc}") from None
            spec = self.setting(vname, tname, size, impl, hp)
            if spec is None:
                continue
            code = self.digest(vname, spec, tname)
            plan.all_cells.extend(Cell(
                benchmark=plan.name, variant=vname, task=tname, seed=seed, size=size, spec=spec,
                task_config=dict(task.config), budget=cell_budget, hparams=hp, slots=tuple(plan.resolved[vname].slots),
                code=code, gate="passed" if code else "built-in", precision=plan.precision,
            ) for seed in plan.seeds)


def _tasks(plan: Plan) -> dict[str, Task]:
    tasks = {}
    for tname in plan.tasks:
        try:
            tasks[tname] = TASKS.get(tname)(plan.task_config.get(tname, {}))
        except UserError as exc:
            raise UserError(f"plan.task_config.{tname}: {exc}") from None
    return tasks


def expand_cells(plan: Plan) -> None:
    """Fill ``plan.resolved``, ``plan.all_cells``, ``plan.cells`` (the first look's) and ``plan.skipped``."""
    tasks = _tasks(plan)
    for vname in plan.variants:
        try:
            plan.resolved[vname] = resolve(vname, plan.base_spec)
        except UserError as exc:
            raise UserError(f"plan variant {vname!r}: {exc}") from None
    rows = hparam_rows(plan.hparams)
    if plan.tuning is not None:   # the trials, beside the drop-in settings (the same points for every arm)
        rows += [p for _, _, p in plan.tuning.points() if p not in rows]
    expander = _Expander(plan)
    for size, impl in itertools.product(plan.sizes or [plan.size], plan.implementations):
        for tname, task in tasks.items():
            for vname in plan.variants:
                expander.cells(size, impl, tname, task, vname, rows)
    plan.all_cells = seed_major(plan.all_cells, plan.variants, plan.seeds)
    plan.cells = plan.cells_through(plan.looks[0]) if plan.adaptive else list(plan.all_cells)
