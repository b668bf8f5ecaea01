"""The dry run's time to a verdict: per task, the seeds a call at one margin needs and the hours they take here.

For each task of a plan, in its primary condition (first size and implementation, no
hyper-parameter setting), the SD of a variant's paired differences with the baseline comes from
the first of:

1. this plan's store: baseline rows of that condition (their ids are the plan's own cells, so
   the plan's budget): the median over variants of the SD of paired differences (variants with
   at least :data:`MIN_PAIRS` seeds paired), else sqrt(2) x the baseline's seed SD (2 seeds or more);
2. a ``modtransfer bench noise`` record measured at the plan's configuration
   (:mod:`modtransfer.run.noise_records`: same task configuration, budget identity, size, implementation
   and spec): its paired-difference SD, else sqrt(2) x its seed SD;
3. the task's declared ``noise_sd`` x sqrt(2), which is for the task's default budget and
   configuration: the line says so, and names what the plan changes.

sqrt(2) x the seed SD is what two independent runs give; pairing by seed can only lower it.
Seeds needed: the fewest paired seeds for which the two-sided paired t test at alpha 0.05 has
80% power against an effect of one margin (:func:`modtransfer.reports.stats.seeds_needed`).
Seconds per cell: the mean ``wall_s`` of this plan's rows of the task in the store (a stacked
member's row carries its share of its group's wall time, so stacking is already counted), else
the ``bench noise`` record's median seconds per baseline run, else the store's measured speed
per step on other tasks, else a FLOP estimate (:func:`modtransfer.run.layout.cell_cost`). The
projection: (cells per seed x seeds needed - cells already done) x seconds per cell / the
layout's workers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modtransfer.core.task import Task
    from modtransfer.run.layout import Layout
    from modtransfer.run.plan_types import Cell, Plan
    from modtransfer.run.store import Store

ALPHA = 0.05
POWER = 0.8
#: paired seeds a variant needs before its paired differences give an SD worth using
MIN_PAIRS = 3


@dataclass
class Projection:
    """One task's figures and where each comes from."""

    task: str
    metric: str
    sd_diff: float
    noise_source: str
    margin: float
    margin_source: str
    seeds_needed: int | None
    cells_per_seed: int
    cells_done: int
    seconds_per_cell: float | None
    time_source: str
    workers: int

    @property
    def cells_left(self) -> int | None:
        if self.seeds_needed is None:
            return None
        return max(0, self.cells_per_seed * self.seeds_needed - self.cells_done)

    @property
    def hours(self) -> float | None:
        if self.cells_left is None or self.seconds_per_cell is None:
            return None
        return self.cells_left * self.seconds_per_cell / max(1, self.workers) / 3600.0


def _usable(row: dict[str, Any]) -> bool:
    v = row.get("primary_value")
    return row.get("status") == "done" and isinstance(v, int | float) and math.isfinite(v)


def store_noise(cells: list[Cell], rows: list[dict[str, Any]]) -> tuple[float, str] | None:
    """(paired-difference SD, where from) from this plan's rows of one task's primary condition."""
    from modtransfer.core.variant import BASELINE

    by_id = {r["cell_id"]: r for r in rows if _usable(r)}
    values: dict[str, dict[int, float]] = {}
    for c in cells:
        if c.cell_id in by_id:
            values.setdefault(c.variant, {})[c.seed] = float(by_id[c.cell_id]["primary_value"])
    base = values.get(BASELINE, {})
    if len(base) < 2:
        return None
    seed_sd = statistics.stdev(base.values())
    sds, ns = [], []
    for variant, vals in values.items():
        seeds = sorted(set(vals) & set(base)) if variant != BASELINE else []
        if len(seeds) >= MIN_PAIRS:
            sds.append(statistics.stdev(vals[s] - base[s] for s in seeds))
            ns.append(len(seeds))
    where = "measured in this store at the plan's budget"
    if sds:
        seed_range = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}"
        return statistics.median(sds), (f"{where}: median over {len(sds)} variant(s) of the SD of paired "
                                        f"differences, {seed_range} seeds; baseline seed SD "
                                        f"{seed_sd:.3g} over {len(base)} seeds")
    return math.sqrt(2.0) * seed_sd, (f"{where}: sqrt(2) x the baseline's seed SD {seed_sd:.3g} over {len(base)} "
                                      f"seeds (no variant has {MIN_PAIRS} paired seeds yet)")


def record_noise(record: dict[str, Any]) -> tuple[float, str] | None:
    """(paired-difference SD, where from) from a ``bench noise`` record at the plan's budget."""
    where = (f"measured by `bench noise` at the plan's budget ({record.get('seeds')} seeds, "
             f"{record.get('measured_at', '?')}; {record.get('path', '')})")
    diff, seed_sd = record.get("paired_diff_sd"), record.get("seed_sd")
    if isinstance(diff, int | float) and diff > 0:
        return float(diff), f"{where}: median SD of paired differences over {len(record.get('pairs') or {})} variant(s)"
    if isinstance(seed_sd, int | float) and seed_sd > 0:
        return math.sqrt(2.0) * float(seed_sd), f"{where}: sqrt(2) x its baseline seed SD {seed_sd:.3g}"
    return None


def declared_noise(cell: Cell | None, task: Task, plan_source: str = "") -> tuple[float, str] | None:
    """(sqrt(2) x the seed SD ``task`` (an instance: the metric it decides on) declares, where from,
    naming what the plan changes)."""
    cls = type(task)
    sd = getattr(task, "noise_sd", 0.0)
    if not isinstance(sd, int | float) or sd <= 0:
        return None
    text = (f"declared by the task for its default budget and configuration: sqrt(2) x its seed SD {sd:.3g}, "
            "no pairing assumed")
    if cell is not None:
        changed = _changes(cell, cls)
        if changed:
            text += (f"; the plan differs ({changed}), so measure it: `modtransfer bench noise {task.name} --plan "
                     f"{plan_source or 'PLAN.yaml'}` or a first round of seeds")
        else:
            text += "; the plan runs that budget"
    return math.sqrt(2.0) * float(sd), text


def _changes(cell: Cell, cls: Any) -> str:
    """The budget fields and task options where ``cell`` differs from the task's defaults."""
    base = cls.default_budget.identity()
    mine = cell.budget.identity()
    out = [f"{k} {mine[k]} vs {base[k]}" for k in mine if mine.get(k) != base.get(k)]
    defaults = getattr(cls, "default_config", {}) or {}
    out += [f"{k} {v} vs {defaults.get(k)}" for k, v in cell.task_config.items()
            if k in defaults and defaults.get(k) != v]  # not decide_on: the declaration is that metric's
    if cell.size != "tiny":
        out.append(f"size {cell.size} vs tiny")
    if cell.spec.implementation != "modtransfer":
        out.append(f"implementation {cell.spec.implementation} vs modtransfer")
    return ", ".join(out)


def cell_seconds(cells: list[Cell], rows: list[dict[str, Any]], record: dict[str, Any] | None,
                 store: Store) -> tuple[float | None, str]:
    """(seconds per cell of one task, where from)."""
    ids = {c.cell_id for c in cells}
    walls = [r for r in rows if r["cell_id"] in ids and isinstance(r.get("wall_s"), int | float) and r["wall_s"] > 0]
    if walls:
        stacked = sum(1 for r in walls if isinstance((r.get("env") or {}).get("stack"), dict))
        note = f", {stacked} of them stacked (each row carries its share of its group's time)" if stacked else ""
        return (statistics.fmean(r["wall_s"] for r in walls),
                f"measured in this store: mean wall_s of {len(walls)} cell(s) of this task{note}")
    if record and isinstance(record.get("seconds_per_cell"), int | float):
        return (float(record["seconds_per_cell"]), "measured by `bench noise` at this budget: median seconds per "
                "baseline run (without W&B or a worker's start-up)")
    if not cells:
        return None, "no cell"
    from modtransfer.run.status import estimate_seconds

    eta = estimate_seconds(store, cells[:1], rows) if rows else None
    if eta:
        return eta, "estimated from this store's speed per step on other tasks"
    from modtransfer.run.layout import cell_cost

    return cell_cost(cells[0]).serial_seconds, "estimated from the cell's FLOPs (rough: no cell measured yet)"


def project(plan: Plan, task: str, rows: list[dict[str, Any]], workers: int, store: Store,
            cache_root: str | Path | None = None) -> Projection:
    """One task's projection (see the module docstring for the order of the sources)."""
    from modtransfer.core.task import TASKS
    from modtransfer.reports.stats import seeds_needed
    from modtransfer.run.noise_records import baseline_cell, primary_cells, read_cell_noise

    cells = primary_cells(plan, task)
    base = baseline_cell(plan, task)
    inst = TASKS.get(task)(base.task_config if base else plan.task_config.get(task, {}), None)
    record = read_cell_noise(base, cache_root) if base is not None else None
    noise = (store_noise(cells, rows) or (record_noise(record) if record else None)
             or declared_noise(base, inst, plan.source))
    sd, src = noise if noise else (math.nan, "unknown: no baseline cell measured, no `bench noise` record, "
                                             "no declared noise_sd")
    if task in plan.margins:
        margin, msrc = float(plan.margins[task]), "plan"
    else:
        m = getattr(inst, "margin", 0.0)
        margin, msrc = (float(m), "task") if isinstance(m, int | float) and m > 0 else (math.nan, "none")
    need = seeds_needed(margin, sd, ALPHA, POWER) if math.isfinite(sd) and sd > 0 and math.isfinite(margin) else None
    task_cells = [c for c in plan.all_cells if c.task == task]
    per_seed = sum(1 for c in task_cells if c.seed == plan.seeds[0])
    keep = set(plan.seeds[:need]) if need else set()
    ids = {c.cell_id for c in task_cells if c.seed in keep}
    done = sum(1 for r in rows if r["cell_id"] in ids and r["status"] in ("done", "diverged"))
    secs, tsrc = cell_seconds(task_cells, rows, record, store)
    return Projection(task, inst.primary_metric, sd, src, margin, msrc, need, per_seed, done,
                      secs, tsrc, workers)


def _hours(h: float | None) -> str:
    if h is None:
        return "unknown"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def projection_lines(plan: Plan, store: Store, layout: Layout, cache_root: str | Path | None = None) -> list[str]:
    """The dry run's lines: per task the seeds needed and the projected wall time, each with its source."""
    ids = {c.cell_id for c in plan.all_cells}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    projs = [project(plan, t, rows, layout.workers, store, cache_root) for t in plan.tasks]
    lines = [f"time to a verdict (80% power for an effect of one margin, two-sided paired t, alpha {ALPHA}; "
             f"projected on this machine with {layout.workers} worker(s) x {layout.threads} thread(s)):"]
    total = 0.0
    for p in projs:
        if p.seeds_needed is None:
            why = "noise unknown" if not math.isfinite(p.sd_diff) else (
                "no margin" if not math.isfinite(p.margin) else "more than 200 seeds")
            lines.append(f"  {p.task}: {why}: no projection")
        else:
            total += p.hours or 0.0
            lines.append(f"  {p.task}: {p.seeds_needed} seeds at margin {p.margin:.3g} {p.metric} ({p.margin_source}'s"
                         f" margin): {p.cells_left} cells left ({p.cells_per_seed} per seed, {p.cells_done} done) x "
                         f"{_secs(p.seconds_per_cell)} / {p.workers} worker(s) = {_hours(p.hours)}")
        lines.append(f"    noise: paired-difference SD {p.sd_diff:.3g} {p.metric}, {p.noise_source}")
        lines.append(f"    time per cell: {_secs(p.seconds_per_cell)}, {p.time_source}")
    if any(p.seeds_needed for p in projs):
        lines.append(f"  all tasks: {_hours(total)} of this machine"
                     + ("" if all(p.seeds_needed for p in projs) else " (tasks without a projection left out)"))
    return lines


def _secs(s: float | None) -> str:
    return "unknown s" if s is None else f"{s:.3g} s"
