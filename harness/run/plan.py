"""Benchmark plans: YAML -> validated cells.

A plan names variants (names, globs, combinations like ``swiglu+rmsnorm``), tasks, seeds
(paired: every variant and the baseline share them; a count, a list, or ``{min, max, step}``
for adaptive seeds), a size preset, budgets, the metric a task decides on where it declares
several (``decide_on: {mt: val_bleu}``), smallest effects of interest per task (``margins``, in
the units of that metric), and optional hyper-parameter axes crossed with the variants. Cells are ordered
seed-major with the variants interleaved (rotated each seed), so a drift in machine load is
spread over every variant instead of falling on whichever ran last. Everything is checked before anything trains;
each problem is one line naming it and the fix (:class:`UserError`, exit code 2).

The plan's data (:class:`Cell`, :class:`Plan`) lives in :mod:`modtransfer.run.plan_types`, the file
reading in :mod:`modtransfer.run.plan_file`, the expansion into cells in :mod:`modtransfer.run.expand`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from modtransfer.builtins import load_builtins
from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.precision import check_precision, resolve_precision
from modtransfer.core.sizes import size_preset
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS, Budget
from modtransfer.core.validate import check_components
from modtransfer.core.variant import BASELINE, VARIANTS, canonical
from modtransfer.run.executors import EXECUTORS
from modtransfer.run.expand import expand_cells
from modtransfer.run.hparams import hparam_rows
from modtransfer.run.plan_file import (
    HARD_MAX_CELLS,
    MAX_CELLS,
    SEED_LIMIT,
    WANDB_NAME_RE,
    check_name,
    check_type,
    read_plan_file,
)
from modtransfer.run.plan_types import Plan
from modtransfer.run.wandb_folders import WANDB_MODES

PLAN_KEYS = {
    "name": str, "description": str, "size": str, "sizes": list, "seeds": (int, list, dict), "variants": list, "tasks": list,
    "spec": dict, "budget": dict, "task_budget": dict, "task_config": dict, "hparams": (dict, list), "wandb": dict,
    "executor": str, "workers": (int, str), "threads": (int, str), "include_baseline": bool, "margins": dict, "implementation": str,
    "implementations": list, "precision": str, "decide_on": dict, "stack": (int, str),
    "tuning": dict,
}
SEED_KEYS = ("min", "max", "step")
MAX_SEEDS = 1000
WANDB_KEYS = {"mode": str, "project": str, "entity": (str, type(None))}


def load_plan(
    source: str | Path | dict[str, Any],
    *,
    variants: str | None = None,
    tasks: str | None = None,
    seeds: int | None = None,
    name: str | None = None,
    allow_large: bool = False,
) -> Plan:
    """Read and validate a plan (a YAML path or a dict) and expand its cells."""
    raw = dict(source) if isinstance(source, dict) else read_plan_file(source)
    src = "" if isinstance(source, dict) else str(source)
    for key, value in raw.items():
        if key not in PLAN_KEYS:
            raise UserError(f"plan: unknown key {key!r}{did_you_mean(str(key), PLAN_KEYS)}; keys: {', '.join(PLAN_KEYS)}")
        check_type(f"plan.{key}", value, PLAN_KEYS[key])
    _no_empty_axes(raw)
    plan_name = name or raw.get("name") or (Path(src).stem if src else "")
    check_name("--name" if name else "plan.name", plan_name)
    sizes, size = _sizes(raw)
    spec_overrides = dict(raw.get("spec") or {})
    impls = _implementations(raw)
    for sz in sizes or [size]:
        for impl in impls:
            _base_spec(sz, spec_overrides, impl)
    base = _base_spec(size, spec_overrides, impls[0])
    seed_list, looks = _seeds(seeds if seeds is not None else raw.get("seeds", 1))
    task_names = _task_names(tasks if tasks is not None else raw.get("tasks", TASKS.names()))
    variant_names = _variant_names(variants if variants is not None else raw.get("variants", []), raw)
    budget, task_budget, task_config = _budgets(raw)
    task_config = _decide_on(raw.get("decide_on") or {}, task_names, task_config)
    hparams = raw.get("hparams", {}) or {}
    n_rows = len(hparam_rows(hparams))
    wandb_cfg = _wandb(raw)
    margins = _margins(raw.get("margins") or {}, task_names)
    precision = _precision(raw.get("precision", "auto"))
    executor, workers, threads = _layout_fields(raw)
    stack = _stack(raw.get("stack", "auto"))
    tuning = _tuning(raw.get("tuning"), task_names)
    n_rows += len(tuning.points()) if tuning else 0
    _check_count(len(variant_names), len(task_names), len(seed_list), n_rows * max(1, len(sizes)) * len(impls),
                 allow_large)
    plan = Plan(
        name=plan_name, size=size, seeds=seed_list, variants=variant_names, tasks=task_names, base_spec=base,
        budget=budget, task_budget=task_budget, task_config=task_config, hparams=hparams, wandb=wandb_cfg,
        executor=executor, workers=workers, threads=threads, raw=raw, source=src, margins=margins, looks=looks, sizes=sizes,
        spec_overrides=spec_overrides, implementations=impls, precision=precision, stack=stack, tuning=tuning,
    )
    expand_cells(plan)
    return plan


#: axes a plan crosses, with what leaving one out means (an empty list would silently mean the same)
EMPTY_AXIS_FIX = {"implementations": "drop the key to run on the default implementation (modtransfer)",
                  "sizes": "drop the key to use size alone", "tasks": "drop the key to run every task",
                  "seeds": "give a count like seeds: 3"}


def _no_empty_axes(raw: dict[str, Any]) -> None:
    """Refuse ``implementations: []`` and the like: an axis with no value is a mistake, not a default."""
    for key, fix in EMPTY_AXIS_FIX.items():
        if raw.get(key) == []:
            raise UserError(f"plan.{key} is an empty list; name at least one, or {fix}")


def _tuning(raw: Any, task_names: list[str]) -> Any:
    """``plan.tuning`` (equal tuning per arm, :mod:`modtransfer.run.tuning`): every task needs a test split."""
    from modtransfer.run.tuning import parse_tuning

    tuning = parse_tuning(raw)
    if tuning is not None:
        for name in task_names:
            if not TASKS.get(name).has_test_split:
                raise UserError(f"plan.tuning: task {name!r} has no test split to report the tuned arms on; "
                                "drop it from this plan or give it test_batches()")
    return tuning


def _stack(value: Any) -> int | str:
    """``plan.stack``: ``auto`` or the most seeds one stacked model may hold (1: one seed at a time)."""
    from modtransfer.run.stacking import MAX_MEMBERS

    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEMBERS:
        raise UserError(f"plan.stack must be auto or a whole number of seeds from 1 (no stacking) to {MAX_MEMBERS}, "
                        f"got {value!r}")
    return value


def _sizes(raw: dict[str, Any]) -> tuple[list[str], str]:
    """(the size axis, [] for none; the first size) from ``size`` or ``sizes``."""
    sizes = list(raw.get("sizes") or [])
    if sizes and ("size" in raw):
        raise UserError("plan sets both size and sizes; use sizes: [tiny, small] for a size axis, or size alone")
    if sizes and (not all(isinstance(x, str) for x in sizes) or len(set(sizes)) != len(sizes)):
        raise UserError(f"plan.sizes must be a list of distinct size preset names, got {sizes!r}")
    return sizes, sizes[0] if sizes else raw.get("size", "tiny")


def _seeds(seed_value: Any) -> tuple[list[int], list[int]]:
    """(the seeds, the adaptive looks or []) from a count, a list of seeds, or ``{min, max, step}``."""
    if isinstance(seed_value, dict):
        return _adaptive_seeds(seed_value)
    if isinstance(seed_value, int):
        if seed_value < 1:
            raise UserError(f"plan.seeds must be >= 1, got {seed_value}")
        if seed_value > MAX_SEEDS:
            raise UserError(f"plan.seeds is {seed_value}, more than {MAX_SEEDS}; use fewer seeds "
                            "(or seeds: {min: 3, max: 12} to add seeds only where needed)")
        return list(range(seed_value)), []
    if not seed_value or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_value):
        raise UserError(f"plan.seeds must be a count or a list of non-negative integers, got {seed_value!r}")
    if len(set(seed_value)) != len(seed_value):
        raise UserError(f"plan.seeds lists a seed twice: {seed_value!r}")
    if len(seed_value) > MAX_SEEDS:
        raise UserError(f"plan.seeds lists {len(seed_value)} seeds, more than {MAX_SEEDS}; use fewer")
    too_big = [s for s in seed_value if s >= SEED_LIMIT]
    if too_big:
        raise UserError(f"plan.seeds: {too_big[0]} is too large; seeds must be below 2**32 = {SEED_LIMIT}")
    return list(seed_value), []


def _task_names(task_items: Any) -> list[str]:
    load_builtins()  # the built-in tasks (and variants) registered
    if isinstance(task_items, list) and not all(isinstance(t, str) for t in task_items):
        raise UserError(f"plan.tasks must be a list of task names, got {task_items!r}")
    task_names = TASKS.select(task_items)
    if not task_names:
        raise UserError("plan selects no task; name at least one in plan.tasks or --tasks")
    return task_names


def _variant_names(var_items: Any, raw: dict[str, Any]) -> list[str]:
    """The baseline, then the variants a list or a comma-separated string names (globs expanded), once each."""
    if isinstance(var_items, list):
        if not all(isinstance(v, str) for v in var_items):
            raise UserError(f"plan.variants must be a list of variant names, got {var_items!r}")
        expanded = [e for item in var_items for e in _expand_variant_item(item)]
    else:
        expanded = [e for item in var_items.split(",") if item.strip() for e in _expand_variant_item(item.strip())]
    if raw.get("include_baseline", True) is False:
        raise UserError("plan.include_baseline: false is not supported: every comparison is paired with the "
                        "baseline on the same seeds; remove the key (the baseline is always run)")
    return list(dict.fromkeys([BASELINE] + [v for v in expanded if v != BASELINE]))


def _budgets(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``budget`` (checked against :class:`Budget`), ``task_budget`` and ``task_config`` (per known task)."""
    budget = raw.get("budget", {}) or {}
    try:
        Budget().replace(**budget)
    except UserError as exc:
        raise UserError(f"plan.budget: {exc}") from None
    task_budget = raw.get("task_budget", {}) or {}
    task_config = raw.get("task_config", {}) or {}
    for label, mapping in (("task_budget", task_budget), ("task_config", task_config)):
        for tname, value in mapping.items():
            TASKS.entry(tname)
            check_type(f"plan.{label}.{tname}", value, dict)
    return budget, task_budget, task_config


def _decide_on(value: dict[str, Any], task_names: list[str], task_config: dict[str, Any]) -> dict[str, Any]:
    """``decide_on: {task: metric}``: the metric each named task decides on, merged into its ``task_config``.

    The choice travels with the cell as the task option ``decide_on`` (so it reaches the task in
    every executor, and cells deciding on different metrics have different ids). Each metric must be
    one the task declares (``Task.decisions``); a task not named keeps its own default.
    """
    out = {t: dict(c) for t, c in task_config.items()}
    for tname, metric in value.items():
        if tname not in task_names:
            raise UserError(f"plan.decide_on.{tname}: not a task of this plan{did_you_mean(str(tname), task_names)}; "
                            f"tasks: {', '.join(task_names)}")
        options = TASKS.get(tname).decidable()
        if not isinstance(metric, str) or metric not in options:
            raise UserError(f"plan.decide_on.{tname}: task {tname!r} cannot decide on {metric!r}; it decides on "
                            f"{' or '.join(options)}{did_you_mean(str(metric), options)}")
        given = out.get(tname, {}).get("decide_on", metric)
        if given != metric:
            raise UserError(f"plan.decide_on.{tname} is {metric!r} but plan.task_config.{tname}.decide_on is "
                            f"{given!r}; keep one of them")
        out.setdefault(tname, {})["decide_on"] = metric
    return out


def _wandb(raw: dict[str, Any]) -> dict[str, Any]:
    """``plan.wandb`` with its defaults: mode (one of :data:`WANDB_MODES`), project, entity."""
    wandb_cfg = {"mode": "offline", "project": "modtransfer", "entity": None, **(raw.get("wandb") or {})}
    for key, value in wandb_cfg.items():
        if key not in WANDB_KEYS:
            raise UserError(f"plan.wandb: unknown key {key!r}{did_you_mean(key, WANDB_KEYS)}")
        check_type(f"plan.wandb.{key}", value, WANDB_KEYS[key])
    if wandb_cfg["mode"] not in WANDB_MODES:
        raise UserError(f"plan.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {wandb_cfg['mode']!r}")
    for key in ("project", "entity"):
        v = wandb_cfg[key]
        if v is not None and not WANDB_NAME_RE.match(v):
            raise UserError(f"plan.wandb.{key} {v!r} is not a valid W&B name: use 1-128 letters, digits, '.', '_' "
                            "or '-' (no '/', '#', '?', '%', ':' or spaces)")
    return wandb_cfg


def _check_count(n_variants: int, n_tasks: int, n_seeds: int, n_combos: int, allow_large: bool) -> None:
    """Refuse a plan over :data:`HARD_MAX_CELLS` cells, or over :data:`MAX_CELLS` without ``--yes``."""
    n_cells = n_variants * n_tasks * n_seeds * n_combos
    shape = f"({n_variants} variants x {n_tasks} tasks x {n_seeds} seeds x {n_combos} settings)"
    if n_cells > HARD_MAX_CELLS:
        raise UserError(f"plan has {n_cells} cells {shape}, over the limit of {HARD_MAX_CELLS}; shrink it")
    if n_cells > MAX_CELLS and not allow_large:
        raise UserError(f"plan has {n_cells} cells {shape}, more than {MAX_CELLS}; pass --yes if you mean it")


def _layout_fields(raw: dict[str, Any]) -> tuple[str, int | None, int | None]:
    """``plan.executor`` (a name in the runner's registry), ``workers`` and ``threads`` (a count or auto)."""
    executor = raw.get("executor", "auto")
    if executor not in EXECUTORS:
        raise UserError(f"plan.executor must be one of {', '.join(EXECUTORS)}, got {executor!r}"
                        f"{did_you_mean(str(executor), EXECUTORS)}")
    counts = []
    for key in ("workers", "threads"):
        value = raw.get(key, "auto")
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"plan.{key} must be an integer >= 1 or auto, got {value!r}")
        counts.append(None if value == "auto" else value)
    if executor == "local" and counts[0] not in (None, 1):
        raise UserError(f"plan.workers is {counts[0]} but the local executor trains in one process; "
                        "use executor: auto or processes, or drop workers")
    return executor, counts[0], counts[1]


def _adaptive_seeds(value: dict[str, Any]) -> tuple[list[int], list[int]]:
    """``{min, max, step}`` -> (seeds 0..max-1, the looks min, min+step, ..., max)."""
    for key in value:
        if key not in SEED_KEYS:
            raise UserError(f"plan.seeds: unknown key {key!r}{did_you_mean(str(key), SEED_KEYS)}; adaptive seeds are "
                            "written seeds: {min: 3, max: 12} (optional step, default min)")
    for key in ("min", "max"):
        if key not in value:
            raise UserError("plan.seeds needs both min and max for adaptive seeds, e.g. seeds: {min: 3, max: 12}")
    lo, hi, step = value["min"], value["max"], value.get("step", value["min"])
    for key, v in (("min", lo), ("max", hi), ("step", step)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"plan.seeds.{key} must be a positive integer, got {v!r}")
    if lo < 3:
        raise UserError(f"plan.seeds.min must be >= 3 (no call is made from fewer paired seeds), got {lo}")
    if hi < lo:
        raise UserError(f"plan.seeds.max ({hi}) must be >= plan.seeds.min ({lo})")
    if hi > MAX_SEEDS:
        raise UserError(f"plan.seeds.max is {hi}, more than {MAX_SEEDS}; use a smaller max")
    return list(range(hi)), look_schedule(lo, hi, step)


def look_schedule(min_seeds: int, max_seeds: int, step: int | None = None) -> list[int]:
    """Numbers of paired seeds at which an adaptive design looks: min, min + step, ..., max."""
    step = step or min_seeds
    looks = list(range(min_seeds, max_seeds + 1, step))
    if looks[-1] != max_seeds:
        looks.append(max_seeds)
    return looks


def _margins(value: dict[str, Any], task_names: list[str]) -> dict[str, float]:
    """``margins: {task: smallest effect of interest}`` in each task's primary-metric units."""
    out = {}
    for task, m in value.items():
        if task not in task_names:
            raise UserError(f"plan.margins.{task}: not a task of this plan{did_you_mean(str(task), task_names)}; "
                            f"tasks: {', '.join(task_names)}")
        if isinstance(m, str):
            raise UserError(f"plan.margins.{task} is the string {m!r}: YAML reads 1e-3 as text, write 1.0e-3")
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m <= 0:
            raise UserError(f"plan.margins.{task} must be a positive number in the task's metric units, got {m!r}")
        out[task] = float(m)
    return out


def _precision(value: Any) -> str:
    """``plan.precision``, refused (before anything trains) when it cannot run on this machine.

    A machine without CUDA trains on its CPU, so ``bf16`` there needs native bf16 instructions.
    """
    check_precision(value)
    if value == "bf16":
        import torch

        if not torch.cuda.is_available():
            resolve_precision(value, "cpu")
    return value


def _implementations(raw: dict[str, Any]) -> list[str]:
    """``implementation: NAME`` or ``implementations: [a, b]`` (an axis); default ``modtransfer``."""
    from modtransfer.core.profiles import IMPLEMENTATIONS

    if "implementation" in raw and "implementations" in raw:
        raise UserError("plan sets both implementation and implementations; use implementations: [a, b] for an "
                        "axis, or implementation alone")
    names = raw.get("implementations") or [raw.get("implementation", "modtransfer")]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise UserError(f"plan.implementations must be a list of distinct implementation names, got {names!r}")
    for n in names:
        IMPLEMENTATIONS.entry(n)  # unknown -> one line with "did you mean"
    return list(names)


def _base_spec(size: str, overrides: dict[str, Any], implementation: str = "modtransfer") -> ModelSpec:
    """The baseline spec of an implementation at a size preset, with the plan's ``spec`` overrides."""
    from modtransfer.core.implementations import apply_implementation

    try:
        base = apply_implementation(implementation, size_preset(size), overrides or None)
    except UserError as exc:
        raise UserError(f"plan.spec: {exc}") from None
    check_components(base)
    return base


def _expand_variant_item(item: str) -> list[str]:
    item = item.strip()
    if not item:
        raise UserError("plan.variants has an empty entry")
    if any(c in item for c in "*?[") and "+" not in item:
        return VARIANTS.select(item)
    return [canonical(item)]
