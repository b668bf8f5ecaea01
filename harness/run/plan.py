"""Benchmark plans: YAML -> validated cells.

A plan names variants (names, globs, combinations like ``swiglu+rmsnorm``), tasks, seeds
(paired: every variant and the baseline share them; a count, a list, or ``{min, max, step}``
for adaptive seeds), a size preset, budgets, smallest effects of interest per task
(``margins``), and optional hyper-parameter axes crossed with the variants. Cells are ordered
seed-major with the variants interleaved (rotated each seed), so a drift in machine load is
spread over every variant instead of falling on whichever ran last. Everything is checked before anything trains;
each problem is one line naming it and the fix (:class:`UserError`, exit code 2).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.precision import check_precision, resolve_precision
from modtransfer.core.sizes import size_preset
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS, Budget, Task
from modtransfer.core.variant import BASELINE, VARIANTS, ResolvedVariant, canonical, code_digest, resolve
from modtransfer.run.runner import EXECUTORS

PLAN_KEYS = {
    "name": str, "description": str, "size": str, "sizes": list, "seeds": (int, list, dict), "variants": list, "tasks": list,
    "spec": dict, "budget": dict, "task_budget": dict, "task_config": dict, "hparams": (dict, list), "wandb": dict,
    "executor": str, "workers": (int, str), "threads": (int, str), "include_baseline": bool, "margins": dict, "implementation": str,
    "implementations": list, "precision": str,
}
SEED_KEYS = ("min", "max", "step")
MAX_SEEDS = 1000
INIT_AXIS = "init"  # a hyper-parameter axis over initialisation schemes (init_* variants)
WANDB_KEYS = {"mode": str, "project": str, "entity": (str, type(None))}
WANDB_MODES = ("offline", "online", "disabled")


@dataclass(frozen=True)
class Cell:
    """One (variant, task, seed, hyper-parameters) training run, identified by a stable hash."""

    benchmark: str
    variant: str
    task: str
    seed: int
    size: str
    spec: ModelSpec                 # variant applied to the baseline; the task fills vocab etc.
    task_config: dict[str, Any]
    budget: Budget
    hparams: dict[str, Any] = field(default_factory=dict)
    slots: tuple[str, ...] = ()
    code: str = ""            # digest of the plugin code the cell uses ("" when all built in)
    gate: str = "built-in"    # the contract gate: "built-in", "passed" or "skipped" (--no-check); not in the id
    precision: str = "auto"   # plan.precision: auto (bf16 on CUDA, fp32 elsewhere), fp32 or bf16

    @property
    def cell_id(self) -> str:
        data = {"variant": self.variant, "task": self.task, "seed": self.seed, "spec": self.spec.to_dict(),
                "task_config": self.task_config, "hparams": self.hparams,
                # evaluating more often observes training without changing it: not part of the id
                "budget": {**self.budget.to_dict(), "eval_every": 0}}
        if self.code:  # a changed plugin trains anew; built-in cells keep their ids
            data["code"] = self.code
        if self.precision != "auto":  # cells of an explicit precision never pair with auto ones
            data["precision"] = self.precision
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        hp = ",".join(f"{k}={v}" for k, v in sorted(self.hparams.items()))
        return f"{self.task}/{self.variant}/{self.seed}" + (f"[{hp}]" if hp else "")


@dataclass
class Plan:
    name: str
    size: str
    seeds: list[int]
    variants: list[str]
    tasks: list[str]
    base_spec: ModelSpec
    budget: dict[str, Any]
    task_budget: dict[str, dict[str, Any]]
    task_config: dict[str, dict[str, Any]]
    hparams: dict[str, list[Any]] | list[dict[str, Any]]   # axes (crossed) or explicit rows
    wandb: dict[str, Any]
    executor: str
    workers: int | None             # worker processes; None: chosen per run (modtransfer.run.layout)
    raw: dict[str, Any]
    source: str = ""
    margins: dict[str, float] = field(default_factory=dict)
    sizes: list[str] = field(default_factory=list)   # size axis; [] = just ``size``
    implementations: list[str] = field(default_factory=lambda: ["modtransfer"])  # baselines the variants patch
    spec_overrides: dict[str, Any] = field(default_factory=dict)   # plan.spec, applied to every size preset
    looks: list[int] = field(default_factory=list)   # adaptive seeds: paired seeds at each look; [] = fixed
    cells: list[Cell] = field(default_factory=list)  # the cells to run now (first look when adaptive)
    all_cells: list[Cell] = field(default_factory=list)  # every cell up to the largest look
    skipped: list[dict[str, str]] = field(default_factory=list)
    resolved: dict[str, ResolvedVariant] = field(default_factory=dict)
    precision: str = "auto"   # see modtransfer.core.precision
    threads: int | None = None      # torch threads per worker; None: chosen per run

    def task_budget_for(self, task: Task) -> Budget:
        base = task.default_budget.replace(**self.budget)
        return base.replace(**self.task_budget.get(task.name, {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "size": self.size, "sizes": self.sizes, "implementations": self.implementations,
            "seeds": {"min": self.looks[0], "max": self.looks[-1], "step": self.looks[1] - self.looks[0]}
            if self.adaptive else self.seeds, "variants": self.variants,
            "tasks": self.tasks, "spec": self.spec_overrides, "budget": self.budget,
            "task_budget": self.task_budget, "task_config": self.task_config, "hparams": self.hparams,
            "wandb": self.wandb, "executor": self.executor, "workers": _auto_name(self.workers),
            "threads": _auto_name(self.threads), "source": self.source,
            "margins": self.margins, "looks": self.looks, "precision": self.precision,
        }

    @property
    def adaptive(self) -> bool:
        return len(self.looks) > 1

    def cells_through(self, look: int, pairs: set[tuple[str, str, str]] | None = None) -> list[Cell]:
        """Cells of the first ``look`` seeds; with ``pairs`` only (variant, task, hparams JSON) in it + their baselines."""
        keep = set(self.seeds[:look])
        out = []
        for c in self.all_cells:
            if c.seed not in keep:
                continue
            if pairs is not None:
                hp = json.dumps(c.hparams, sort_keys=True)
                base_needed = any(t == c.task and h == hp for _, t, h in pairs)
                if (c.variant, c.task, hp) not in pairs and not (c.variant == BASELINE and base_needed):
                    continue
            out.append(c)
        return out


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {str: "a string", int: "an integer", list: "a list", dict: "a mapping", bool: "true/false",
            type(None): "null"}.get(t, t.__name__)


def _check_type(where: str, value: Any, want: Any) -> None:
    ok = isinstance(value, want) and not (isinstance(value, bool) and want in (int, (int, list)))
    if not ok:
        raise UserError(f"{where} must be {_type_name(want)}, got {value!r}")


MAX_PLAN_BYTES = 1 << 20     # a plan is a few hundred bytes; a megabyte is not a plan
MAX_YAML_ALIASES = 100       # anchors/aliases are fine for sharing a budget, not for a "billion laughs"
MAX_YAML_DEPTH = 20          # a plan nests three or four levels
MAX_CELLS = 5000             # above this a plan needs --yes
HARD_MAX_CELLS = 1_000_000   # never, even with --yes
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
WANDB_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SEED_LIMIT = 2**32           # numpy and CUDA generators take seeds below 2**32


class _PlanLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, list | dict):
                raise UserError(f"plan line {line}: a key must be a plain name, not {type(key).__name__}")
            if key in seen:
                raise UserError(f"plan line {line}: key {key!r} appears twice (first at line {seen[key]}); "
                                "keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_yaml_shape(text: str, where: str) -> None:
    """Bound aliases and nesting depth from the event stream, before anything is expanded."""
    aliases = depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise UserError(f"plan {where} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                                "write the values out instead")
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise UserError(f"plan {where} nests deeper than {MAX_YAML_DEPTH} levels (line {line}); "
                                "a plan needs three or four")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def read_plan_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {str(p)!r} not found; pass the path of a plan YAML (e.g. configs/bench/smoke.yaml)")
    try:
        size = p.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise UserError(f"plan {p} is {size} bytes, not a plan YAML (at most {MAX_PLAN_BYTES}); check the path")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"plan {p} is not a UTF-8 text file; pass a plan YAML (e.g. configs/bench/smoke.yaml)") from None
    except OSError as exc:
        raise UserError(f"cannot read plan {p}: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise UserError(f"plan {p} is a binary file, not a plan YAML; check the path")
    try:
        _check_yaml_shape(text, str(p))
        data = yaml.load(text, Loader=_PlanLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"plan {p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise UserError(f"plan {p} nests too deeply to read; a plan needs three or four levels") from None
    if not isinstance(data, dict):
        raise UserError(f"plan {p} must be a YAML mapping with keys like name, variants, tasks, seeds")
    return data


def check_name(what: str, value: str) -> str:
    """A name used as a folder: letters, digits, '.', '_', '-', not starting with '.', at most 100 characters."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
        raise UserError(f"{what} {shown!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                        "or digit (it names a folder)")
    return value


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
        _check_type(f"plan.{key}", value, PLAN_KEYS[key])

    plan_name = name or raw.get("name") or (Path(src).stem if src else "")
    check_name("--name" if name else "plan.name", plan_name)
    sizes = list(raw.get("sizes") or [])
    if sizes and ("size" in raw):
        raise UserError("plan sets both size and sizes; use sizes: [tiny, small] for a size axis, or size alone")
    if sizes and (not all(isinstance(x, str) for x in sizes) or len(set(sizes)) != len(sizes)):
        raise UserError(f"plan.sizes must be a list of distinct size preset names, got {sizes!r}")
    size = sizes[0] if sizes else raw.get("size", "tiny")
    spec_overrides = dict(raw.get("spec") or {})
    impls = _implementations(raw)
    for sz in sizes or [size]:
        for impl in impls:
            base = _base_spec(sz, spec_overrides, impl)
    base = _base_spec(size, spec_overrides, impls[0])

    # seeds
    seed_value: Any = seeds if seeds is not None else raw.get("seeds", 1)
    looks: list[int] = []
    if isinstance(seed_value, dict):
        seed_list, looks = _adaptive_seeds(seed_value)
    elif isinstance(seed_value, int):
        if seed_value < 1:
            raise UserError(f"plan.seeds must be >= 1, got {seed_value}")
        if seed_value > MAX_SEEDS:
            raise UserError(f"plan.seeds is {seed_value}, more than {MAX_SEEDS}; use fewer seeds "
                            "(or seeds: {min: 3, max: 12} to add seeds only where needed)")
        seed_list = list(range(seed_value))
    else:
        if not seed_value or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_value):
            raise UserError(f"plan.seeds must be a count or a list of non-negative integers, got {seed_value!r}")
        if len(set(seed_value)) != len(seed_value):
            raise UserError(f"plan.seeds lists a seed twice: {seed_value!r}")
        if len(seed_value) > MAX_SEEDS:
            raise UserError(f"plan.seeds lists {len(seed_value)} seeds, more than {MAX_SEEDS}; use fewer")
        too_big = [s for s in seed_value if s >= SEED_LIMIT]
        if too_big:
            raise UserError(f"plan.seeds: {too_big[0]} is too large; seeds must be below 2**32 = {SEED_LIMIT}")
        seed_list = list(seed_value)

    # tasks
    import modtransfer.tasks  # noqa: F401  (registers the built-in tasks)

    task_items = tasks if tasks is not None else raw.get("tasks", TASKS.names())
    if isinstance(task_items, list) and not all(isinstance(t, str) for t in task_items):
        raise UserError(f"plan.tasks must be a list of task names, got {task_items!r}")
    task_names = TASKS.select(task_items)
    if not task_names:
        raise UserError("plan selects no task; name at least one in plan.tasks or --tasks")

    # variants
    var_items = variants if variants is not None else raw.get("variants", [])
    if isinstance(var_items, list):
        if not all(isinstance(v, str) for v in var_items):
            raise UserError(f"plan.variants must be a list of variant names, got {var_items!r}")
        expanded: list[str] = []
        for item in var_items:
            expanded.extend(_expand_variant_item(item))
    else:
        expanded = [e for item in var_items.split(",") if item.strip() for e in _expand_variant_item(item.strip())]
    if raw.get("include_baseline", True) is False:
        raise UserError("plan.include_baseline: false is not supported: every comparison is paired with the "
                        "baseline on the same seeds; remove the key (the baseline is always run)")
    expanded = [BASELINE] + [v for v in expanded if v != BASELINE]
    variant_names = list(dict.fromkeys(expanded))

    # budgets and task configs
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
            _check_type(f"plan.{label}.{tname}", value, dict)

    # hyper-parameter axes (crossed) or explicit rows: budget fields, spec fields and init schemes
    hparams = raw.get("hparams", {}) or {}
    rows = hparam_rows(hparams)

    wandb_cfg = {"mode": "offline", "project": "modtransfer", "entity": None, **(raw.get("wandb") or {})}
    for key, value in wandb_cfg.items():
        if key not in WANDB_KEYS:
            raise UserError(f"plan.wandb: unknown key {key!r}{did_you_mean(key, WANDB_KEYS)}")
        _check_type(f"plan.wandb.{key}", value, WANDB_KEYS[key])
    if wandb_cfg["mode"] not in WANDB_MODES:
        raise UserError(f"plan.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {wandb_cfg['mode']!r}")
    for key in ("project", "entity"):
        v = wandb_cfg[key]
        if v is not None and not WANDB_NAME_RE.match(v):
            raise UserError(f"plan.wandb.{key} {v!r} is not a valid W&B name: use 1-128 letters, digits, '.', '_' "
                            "or '-' (no '/', '#', '?', '%', ':' or spaces)")
    margins = _margins(raw.get("margins") or {}, task_names)
    precision = _precision(raw.get("precision", "auto"))
    executor, workers, threads = _layout_fields(raw)

    n_combos = len(rows) * max(1, len(sizes)) * len(impls)
    n_cells = len(variant_names) * len(task_names) * len(seed_list) * n_combos
    if n_cells > HARD_MAX_CELLS:
        raise UserError(f"plan has {n_cells} cells ({len(variant_names)} variants x {len(task_names)} tasks x "
                        f"{len(seed_list)} seeds x {n_combos} settings), over the limit of {HARD_MAX_CELLS}; shrink it")
    if n_cells > MAX_CELLS and not allow_large:
        raise UserError(f"plan has {n_cells} cells ({len(variant_names)} variants x {len(task_names)} tasks x "
                        f"{len(seed_list)} seeds x {n_combos} settings), more than {MAX_CELLS}; pass --yes if you "
                        "mean it")

    plan = Plan(
        name=plan_name, size=size, seeds=seed_list, variants=variant_names, tasks=task_names, base_spec=base,
        budget=budget, task_budget=task_budget, task_config=task_config, hparams=hparams, wandb=wandb_cfg,
        executor=executor, workers=workers, threads=threads, raw=raw, source=src, margins=margins, looks=looks, sizes=sizes,
        spec_overrides=spec_overrides, implementations=impls, precision=precision,
    )
    _expand_cells(plan)
    return plan


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


def _auto_name(value: int | None) -> int | str:
    return "auto" if value is None else value


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
    from modtransfer.core.implementations import IMPLEMENTATIONS

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
    base.check_components()
    return base


#: ModelSpec fields the task sets (never an axis).
TASK_SET_FIELDS = ("vocab_size", "in_features", "out_features", "max_len")


def hparam_rows(hparams: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """The settings of a plan's ``hparams``: the cross product of axes, or the explicit rows as given.

    In a list of rows, an item ``{cross: {axis: [values], ...}}`` stands for the rows of that grid.

    A key may be a budget field (``lr``, ``steps``, ...), a ModelSpec field (``n_layers``,
    ``d_model``, ``dropout``, ...) or ``init`` (an init scheme applied to every variant).
    """
    budget_fields = set(Budget().to_dict())
    spec_fields = {f for f in ModelSpec().to_dict() if f not in TASK_SET_FIELDS}
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
            canonical(_init_expr(value))

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


def _expand_variant_item(item: str) -> list[str]:
    item = item.strip()
    if not item:
        raise UserError("plan.variants has an empty entry")
    if any(c in item for c in "*?[") and "+" not in item:
        return VARIANTS.select(item)
    return [canonical(item)]


def _expand_cells(plan: Plan) -> None:
    tasks = {}
    for tname in plan.tasks:
        cls = TASKS.get(tname)
        try:
            tasks[tname] = cls(plan.task_config.get(tname, {}))
        except UserError as exc:
            raise UserError(f"plan.task_config.{tname}: {exc}") from None
    for vname in plan.variants:
        try:
            plan.resolved[vname] = resolve(vname, plan.base_spec)
        except UserError as exc:
            raise UserError(f"plan variant {vname!r}: {exc}") from None
    from modtransfer.core.implementations import resolve_on

    rows = hparam_rows(plan.hparams)
    spec_fields = set(ModelSpec().to_dict())
    budget_fields = set(Budget().to_dict())
    resolved: dict[tuple[str, str, str, str], tuple[Any, str | None]] = {}

    def variant_on(vname: str, size: str, impl: str, spec_part: dict[str, Any]) -> tuple[Any, str | None]:
        """(the variant resolved on the implementation's baseline at this size and setting, why it cannot run)."""
        key = (vname, size, impl, json.dumps(spec_part, sort_keys=True))
        if key not in resolved:
            overrides = {**plan.spec_overrides, **spec_part}
            try:
                resolved[key] = resolve_on(impl, vname, size_preset(size), overrides or None)
            except UserError as exc:
                raise UserError(f"plan variant {vname!r} on {impl} with {spec_part or 'the plan spec'}: {exc}") from None
        return resolved[key]

    digests: dict[tuple[str, str, str], str] = {}

    def digest(vname: str, spec: ModelSpec, tname: str) -> str:
        """The plugin-code digest of a cell's variant (computed once per variant, spec and task)."""
        key = (vname, spec.digest(), tname)
        if key not in digests:
            digests[key] = code_digest(vname, spec, task=tname)
        return digests[key]

    for size, impl in itertools.product(plan.sizes or [plan.size], plan.implementations):
        for tname, task in tasks.items():
            try:
                budget = plan.task_budget_for(task)
            except UserError as exc:
                raise UserError(f"plan.task_budget.{tname}: {exc}") from None
            for vname in plan.variants:
                rv0 = plan.resolved[vname]
                reason = rv0.missing(task.capabilities)
                if reason:
                    if size == (plan.sizes or [plan.size])[0]:
                        plan.skipped.append({"variant": vname, "task": tname, "reason": reason})
                    continue
                for hp in rows:
                    try:
                        cell_budget = budget.replace(**{k: v for k, v in hp.items() if k in budget_fields})
                    except UserError as exc:
                        raise UserError(f"plan.hparams: {exc}") from None
                    spec_part = {k: v for k, v in hp.items() if k in spec_fields and k != INIT_AXIS}
                    rv, why = variant_on(vname, size, impl, spec_part)
                    if why:
                        skip = {"variant": vname, "task": tname, "reason": f"on implementation {impl}: {why}"}
                        if skip not in plan.skipped:
                            plan.skipped.append(skip)
                        continue
                    base_now = variant_on("baseline", size, impl, spec_part)[0].spec
                    spec = rv.spec
                    init = hp.get(INIT_AXIS, "default")
                    if init != "default":
                        if rv.spec.init != base_now.init or rv.spec.init_scale != base_now.init_scale:
                            plan.skipped.append({"variant": vname, "task": tname,
                                                 "reason": f"sets its own initialisation (hparams init={init})"})
                            continue
                        spec = resolve(_init_expr(init), rv.spec).spec
                    code = digest(vname, spec, tname)
                    for seed in plan.seeds:
                        plan.all_cells.append(Cell(
                            benchmark=plan.name, variant=vname, task=tname, seed=seed, size=size, spec=spec,
                            task_config=dict(task.config), budget=cell_budget, hparams=hp, slots=tuple(rv.slots),
                            code=code, gate="passed" if code else "built-in", precision=plan.precision,
                        ))
    plan.all_cells = seed_major(plan.all_cells, plan.variants, plan.seeds)
    plan.cells = plan.cells_through(plan.looks[0]) if plan.adaptive else list(plan.all_cells)


def seed_major(cells: list[Cell], variants: list[str], seeds: list[int]) -> list[Cell]:
    """Seed by seed; within a seed task by task; the variants' order rotated by one each seed.

    A change in machine load during a benchmark then touches every variant alike instead of
    being confounded with whichever variant ran last.
    """
    vpos = {v: i for i, v in enumerate(variants)}
    spos = {s: i for i, s in enumerate(seeds)}
    nv = max(1, len(variants))

    def key(c: Cell) -> tuple[int, str, str, str, int]:
        k = spos[c.seed]
        return k, c.size, c.task, json.dumps(c.hparams, sort_keys=True), (vpos[c.variant] - k) % nv

    return sorted(cells, key=key)


def _init_expr(value: str) -> str:
    """``xavier_uniform`` or ``init_xavier_uniform`` -> the init variant expression."""
    return value if value.startswith("init_") else f"init_{value}"
