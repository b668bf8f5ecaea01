"""Draw every figure of a report into a folder; returns their file names by role.

Every study shape gets something: a study with variants gets the transfer heatmap, a forest plot
per condition, learning curves per condition and (with two tasks and two variants) the
agreement matrix; a study with hyper-parameter settings gets a heatmap of the baseline's primary
metric over its grid per task; a baseline-only study gets learning curves with one panel per
setting.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import curve_plots, plots
from .analysis import axis_keys, cond_key, conditions
from .intervals import excludes_zero_uncalled, shown_interval
from .names import display_name
from .plateau import grid
from .records import BASELINE, Condition, usable
from .summary import Analysis, unit

MARKS = {"better": "*", "worse": "*", "unstable": "✗", "missing": "", "no change": "=", "unclear": "",
         "not learned": "○", "too few seeds": ""}
#: With fewer variants than this, a Kendall tau moves in coarse steps: the agreement figure says so.
FEW_VARIANTS = 6


@dataclass
class Figures:
    heatmap: str = ""
    forest: dict[str, str] = field(default_factory=dict)       # condition label -> file
    curves: dict[str, str] = field(default_factory=dict)       # condition label; task group in a baseline-only study
    agreement: str = ""
    sensitivity: dict[str, str] = field(default_factory=dict)  # task -> file
    plateau: dict[str, str] = field(default_factory=dict)      # "task / variant" -> failure-rate heatmap
    spread: dict[str, str] = field(default_factory=dict)       # "task / variant" -> final-metric distribution
    sweep: dict[str, str] = field(default_factory=dict)        # task group -> baseline's metric per setting

    def all(self) -> list[str]:
        files = [self.heatmap, self.agreement, *self.forest.values(), *self.curves.values(), *self.sensitivity.values(),
                 *self.plateau.values(), *self.spread.values(), *self.sweep.values()]
        return [f for f in files if f]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def mark(call: str) -> str:
    return MARKS.get(call, "")


def _save(fig: Any, folder: Path, name: str) -> str:
    return plots.save(fig, folder / name).name


def draw(a: Analysis, folder: Path) -> Figures:
    """All figures of ``a`` as PNGs in ``folder``."""
    figs = Figures()
    _plateau(a, folder, figs)
    _sweep(a, folder, figs)
    _curves(a, folder, figs)
    if not a.order:
        return figs
    _heatmap(a, folder, figs)
    _forests(a, folder, figs)
    if len(a.labels) >= 2 and len(a.order) >= 2:
        figs.agreement = _save(_agreement(a), folder, "agreement.png")
    _sensitivity(a, folder, figs)
    return figs


def by_condition(rows: list[dict[str, Any]]) -> tuple[dict[str, Condition], dict[str, dict[str, list[dict]]]]:
    """Conditions by label, and each condition's rows by variant (the same keys the comparisons pair on)."""
    conds = conditions(rows)
    axes = axis_keys(rows)
    out: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        cond = conds[cond_key(r, axes)]
        out.setdefault(cond.label, {}).setdefault(r["variant"], []).append(r)
    return {c.label: c for c in conds.values()}, out


def _heatmap(a: Analysis, folder: Path, figs: Figures) -> None:
    variants = list(a.order)
    values = np.full((len(variants), len(a.labels)), np.nan)
    marks = [["" for _ in a.labels] for _ in variants]
    for i, v in enumerate(variants):
        for j, lab in enumerate(a.labels):
            c = a.comp(v, lab)
            if c is None:
                marks[i][j] = "not run"
            else:
                values[i, j] = c.std_effect
                marks[i][j] = mark(c.call)
    figs.heatmap = _save(plots.heatmap(variants, a.labels, values, marks, a.effect_unit), folder, "heatmap.png")


def _forests(a: Analysis, folder: Path, figs: Figures) -> None:
    for lab in a.labels:
        cs = [c for c in (a.comp(v, lab) for v in a.order) if c is not None]
        if not cs:
            continue
        cond = cs[0].cond
        rows = []
        for c in cs:
            lo, hi, _kind = shown_interval(a, c)
            ci = (lo, hi) if math.isfinite(lo) else None
            rows.append(plots.ForestRow(display_name(c.variant), c.mean_diff, ci, list(c.diffs), c.call,
                                        excludes_zero_uncalled(c)))
        margin, _ = a.settings.margin(cond.task)
        u = f"Δ {cond.metric}, {unit(cond.metric, cond.task, a.rows)}"
        direction = f"{'higher' if cond.higher_is_better else 'lower'} {cond.metric}"
        fig = plots.forest(lab, u, rows, margin, a.settings.level, direction)
        figs.forest[lab] = _save(fig, folder, f"forest_{slug(lab)}.png")


def _curves_of(rows: list[dict]) -> list[list[dict]]:
    return [r["curve"] for r in rows if r["status"] == "done" and r.get("curve")]


def _curves(a: Analysis, folder: Path, figs: Figures) -> None:
    """Per condition one panel per variant (baseline beside it); without variants, per task one panel per setting."""
    conds, rows = by_condition(a.rows)
    jobs: dict[str, tuple[Condition, dict[str, list[curve_plots.Series]]]] = {}
    if a.order:
        for lab, cond in conds.items():
            per = rows.get(lab, {})
            base = curve_plots.Series(BASELINE, _curves_of(per.get(BASELINE, [])), reference=True)
            panels = {v: [base, curve_plots.Series(v, _curves_of(per[v]))] for v in a.order if _curves_of(per.get(v, []))}
            if panels:
                jobs[lab] = (cond, panels)
    else:
        for lab, cond in conds.items():
            curves = _curves_of(rows.get(lab, {}).get(BASELINE, []))
            if curves:
                setting = lab[len(cond.group):].strip(" []") or "baseline"
                jobs.setdefault(cond.group, (cond, {}))[1][setting] = [curve_plots.Series(BASELINE, curves)]
    for key, (cond, panels) in jobs.items():
        fig = curve_plots.curves(key, panels, cond.metric, f"train_loss ({unit('train_loss', cond.task)})",
                           f"{cond.metric} ({unit(cond.metric, cond.task)})")
        figs.curves[key] = _save(fig, folder, f"curves_{slug(key)}.png")


def _agreement(a: Analysis) -> Any:
    g = a.agreement
    index = {lab: i for i, lab in enumerate(g.labels)}
    ci = np.full((*g.tau.shape, 2), np.nan)
    for p in g.pairs:
        if p["ci"] is not None:
            i, j = index[p["a"]], index[p["b"]]
            ci[i, j] = ci[j, i] = p["ci"]
    notes = []
    ranked = min((p["n_variants"] for p in g.pairs), default=0)
    if 0 < ranked < FEW_VARIANTS:
        step = 4 / (ranked * (ranked - 1)) if ranked > 1 else math.nan
        notes.append(f"Caveat: only {ranked} variants ranked, so tau takes few values (one swap moves it by "
                     f"{step:.2g}) and its interval is wide.")
    if g.seeds_note:
        notes.append(f"Caveat: {g.seeds_note}.")
    return plots.agreement_matrix(g.labels, g.tau, ci, " ".join(notes), a.settings.level)


def _sensitivity(a: Analysis, folder: Path, figs: Figures) -> None:
    conds = {c.cond.label: c.cond for c in a.comps if c.cond.hparams}
    tasks = sorted({(c.task, c.size) for c in conds.values()})
    for task, size in tasks:
        labs = [lab for lab in a.labels if lab in conds and (conds[lab].task, conds[lab].size) == (task, size)]
        if len(labs) < 2:
            continue
        settings = [", ".join(f"{k}={v}" for k, v in sorted(conds[lab].hparams.items())) for lab in labs]
        series: dict[str, list[float]] = {BASELINE: []}
        for v in a.order:
            series[v] = []
        for lab in labs:
            cond = conds[lab]
            for v in series:
                vals = [r["primary_value"] for r in a.rows if r["variant"] == v and usable(r)
                        and (r["task"], r["size"], json.dumps(r.get("hparams") or {}, sort_keys=True))
                        == (cond.task, cond.size, cond.hparams_json)]
                series[v].append(float(np.mean(vals)) if vals else math.nan)
        cond = conds[labs[0]]
        name = f"{task}@{size}" if len({c.size for c in conds.values()}) > 1 else task
        ylabel = f"{cond.metric} ({unit(cond.metric, task)})"
        fig = plots.sensitivity(name, settings, series, ylabel)
        figs.sensitivity[name] = _save(fig, folder, f"sensitivity_{slug(name)}.png")


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _order(values: list[str]) -> list[str]:
    """Setting values in numeric order when they are all numbers, else as first seen."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def grid_of(hparams: dict[str, dict[str, Any]]) -> tuple[str, list[str], str, list[str], dict[str, tuple[int, int]]]:
    """Settings (label -> hyper-parameters) as a matrix: the axis with the most values as rows, the rest as columns.

    With one axis the settings form a single row. Returns (row axis, row labels, column axis,
    column labels, label -> (row, column)).
    """
    keys = sorted({k for h in hparams.values() for k in h})
    distinct = {k: list(dict.fromkeys(_value(h.get(k)) for h in hparams.values())) for k in keys}
    row_key = max(keys, key=lambda k: (len(distinct[k]), k == "init")) if len(keys) > 1 else ""
    rest = [k for k in keys if k != row_key]

    def col_of(h: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_value(h.get(k))}" for k in rest) if len(rest) > 1 else _value(h.get(rest[0]))

    rows = _order(distinct[row_key]) if row_key else [""]
    cols = _order(list(dict.fromkeys(col_of(h) for h in hparams.values())))
    cell = {lab: (rows.index(_value(h.get(row_key))) if row_key else 0, cols.index(col_of(h)))
            for lab, h in hparams.items()}
    return row_key, rows, ", ".join(rest), cols, cell


def sweep_grid(hparams: dict[str, dict[str, Any]], baseline: dict[str, list[dict[str, Any]]]
               ) -> tuple[str, list[str], str, list[str], np.ndarray, list[list[str]]]:
    """The baseline's primary metric over a grid of settings: (row axis, rows, column axis, columns, means, texts).

    ``hparams``: condition label -> its hyper-parameters; ``baseline``: condition label -> the
    baseline's rows there. A cell's text: mean, seed SD and seeds with a value, and failed cells.
    """
    row_axis, row_labels, col_axis, col_labels, cell = grid_of(hparams)
    values = np.full((len(row_labels), len(col_labels)), np.nan)
    texts = [["not run" for _ in col_labels] for _ in row_labels]
    for lab, (i, j) in cell.items():
        base = baseline.get(lab, [])
        vals = [float(r["primary_value"]) for r in base if usable(r)]
        text = f"{np.mean(vals):.4g}" if vals else "no value"
        text += f"\n±{np.std(vals, ddof=1):.2g}, n={len(vals)}" if len(vals) > 1 else f"\nn={len(vals)}"
        bad = len(base) - len(vals)
        texts[i][j] = text + (f", {bad} failed" if bad else "")
        values[i, j] = float(np.mean(vals)) if vals else math.nan
    return row_axis, row_labels, col_axis, col_labels, values, texts


def _sweep(a: Analysis, folder: Path, figs: Figures) -> None:
    """Per task group with two or more hyper-parameter settings: the baseline's primary metric per setting."""
    conds, rows = by_condition(a.rows)
    for group in sorted({c.group for c in conds.values()}):
        hps = {lab: c.hparams for lab, c in conds.items() if c.group == group and c.hparams}
        if len(hps) < 2:
            continue
        row_axis, row_labels, col_axis, col_labels, values, texts = sweep_grid(
            hps, {lab: rows.get(lab, {}).get(BASELINE, []) for lab in hps})
        cond = conds[next(iter(hps))]
        metric = f"{cond.metric} ({unit(cond.metric, cond.task)})"
        title = f"{group}: baseline {cond.metric} per hyper-parameter setting (mean ± seed SD; best framed)"
        fig = plots.sweep(title, row_labels, col_labels, values, texts, metric, cond.higher_is_better,
                          row_axis, col_axis)
        figs.sweep[group] = _save(fig, folder, f"sweep_{slug(group)}.png")


def _plateau(a: Analysis, folder: Path, figs: Figures) -> None:
    """Failure-rate heatmap and final-metric spread per task and variant of a sensitivity study."""
    by: dict[tuple[str, str], list] = {}
    for s in a.plateau():
        by.setdefault((s.task, s.variant), []).append(s)
    for (task, variant), settings in by.items():
        name = f"{task} / {variant}"
        rows, cols, values, texts = grid(settings)
        keys = sorted({k for s in settings for k in s.hparams})
        distinct = {k: {json.dumps(s.hparams.get(k)) for s in settings} for k in keys}
        row_axis = max(keys, key=lambda k: (len(distinct[k]), k == "init")) if keys else ""
        fig = plots.failure_heatmap(f"{name}: seeds that never left the plateau", rows, cols, values, texts, row_axis)
        figs.plateau[name] = _save(fig, folder, f"plateau_{slug(name)}.png")
        fig = plots.final_distribution(f"{name}: final {settings[0].metric} per seed", [s.label for s in settings],
                                       [s.values for s in settings], settings[0].threshold,
                                       f"{settings[0].metric} ({unit(settings[0].metric, task)})")
        figs.spread[name] = _save(fig, folder, f"spread_{slug(name)}.png")
