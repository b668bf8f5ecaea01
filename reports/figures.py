"""Draw every figure of a report into a folder; returns their file names by role."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plots
from .analysis import BASELINE, usable
from .summary import Analysis, unit

MARKS = {"better": "*", "worse": "*", "unstable": "✗", "missing": "", "no change": "=", "unclear": "",
         "not learned": "○", "too few seeds": ""}


@dataclass
class Figures:
    heatmap: str = ""
    forest: dict[str, str] = field(default_factory=dict)       # condition label -> file
    curves: dict[str, str] = field(default_factory=dict)
    agreement: str = ""
    sensitivity: dict[str, str] = field(default_factory=dict)  # task -> file
    plateau: dict[str, str] = field(default_factory=dict)      # "task / variant" -> failure-rate heatmap
    spread: dict[str, str] = field(default_factory=dict)       # "task / variant" -> final-metric distribution

    def all(self) -> list[str]:
        files = [self.heatmap, self.agreement, *self.forest.values(), *self.curves.values(), *self.sensitivity.values(),
                 *self.plateau.values(), *self.spread.values()]
        return [f for f in files if f]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def mark(call: str) -> str:
    return MARKS.get(call, "")


def draw(a: Analysis, folder: Path) -> Figures:
    """All figures of ``a`` as PNGs in ``folder``."""
    figs = Figures()
    _plateau(a, folder, figs)
    variants = list(a.order)
    if not variants:
        return figs
    values = np.full((len(variants), len(a.labels)), np.nan)
    marks = [["" for _ in a.labels] for _ in variants]
    for i, v in enumerate(variants):
        for j, lab in enumerate(a.labels):
            c = a.comp(v, lab)
            if c is not None:
                values[i, j] = c.std_effect
                marks[i][j] = mark(c.call)
    figs.heatmap = plots.heatmap(folder / "heatmap.png", variants, a.labels, values, marks, a.effect_unit).name
    for lab in a.labels:
        cs = [a.comp(v, lab) for v in variants]
        items = [(c.variant, c.mean_diff, *(c.ci or (math.nan, math.nan)), c.call) for c in cs if c is not None]
        if not items:
            continue
        cond = next(c for c in cs if c is not None).cond
        u = f"Δ {cond.metric}, {unit(cond.metric, cond.task)}"
        figs.forest[lab] = plots.forest(folder / f"forest_{slug(lab)}.png", lab, u, items).name
    _curves(a, folder, figs)
    if len(a.labels) >= 2 and len(variants) >= 2:
        figs.agreement = plots.agreement_matrix(folder / "agreement.png", a.agreement.labels, a.agreement.tau).name
    _sensitivity(a, folder, figs)
    return figs


def _curves(a: Analysis, folder: Path, figs: Figures) -> None:
    by_label: dict[str, dict[str, list[list[dict]]]] = {}
    cond_of = {}
    for c in a.comps:
        cond_of[c.cond.label] = c.cond
    for r in a.rows:
        if r["status"] != "done" or not r.get("curve"):
            continue
        lab = _label(r, cond_of)
        if lab is not None:
            by_label.setdefault(lab, {}).setdefault(r["variant"], []).append(r["curve"])
    for lab, per in by_label.items():
        variants = {v: per[v] for v in a.order if v in per}
        if not variants:
            continue
        cond = cond_of[lab]
        ylabel = f"train_loss ({unit('train_loss', cond.task)})"
        figs.curves[lab] = plots.curves(folder / f"curves_{slug(lab)}.png", lab, ylabel, per.get(BASELINE, []),
                                        variants).name


def _label(row: dict, cond_of: dict) -> str | None:
    hp = json.dumps(row.get("hparams") or {}, sort_keys=True)
    for lab, cond in cond_of.items():
        if (cond.task, cond.size, cond.hparams_json) == (row["task"], row["size"], hp):
            return lab
    return None


def _plateau(a: Analysis, folder: Path, figs: Figures) -> None:
    """Failure-rate heatmap and final-metric spread per task and variant of a sensitivity study."""
    from .plateau import grid

    by: dict[tuple[str, str], list] = {}
    for s in a.plateau():
        by.setdefault((s.task, s.variant), []).append(s)
    for (task, variant), settings in by.items():
        name = f"{task} / {variant}"
        rows, cols, values, texts = grid(settings)
        keys = sorted({k for s in settings for k in s.hparams})
        distinct = {k: {json.dumps(s.hparams.get(k)) for s in settings} for k in keys}
        row_axis = max(keys, key=lambda k: (len(distinct[k]), k == "init")) if keys else ""
        figs.plateau[name] = plots.failure_heatmap(
            folder / f"plateau_{slug(name)}.png", f"{name}: seeds that never left the plateau", rows, cols, values,
            texts, row_axis).name
        figs.spread[name] = plots.final_distribution(
            folder / f"spread_{slug(name)}.png", f"{name}: final {settings[0].metric} per seed",
            [s.label for s in settings], [s.values for s in settings], settings[0].threshold,
            f"{settings[0].metric} ({unit(settings[0].metric, task)})").name


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
        figs.sensitivity[name] = plots.sensitivity(folder / f"sensitivity_{slug(name)}.png", name, settings, series,
                                                   ylabel).name
