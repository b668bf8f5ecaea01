"""Learning-rate curves: each arm's final metric against the learning rate, and the width of the range that trains.

Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training instabilities",
arXiv 2309.14322) compare modifications by the whole final-loss-vs-learning-rate curve: some (QK
layer norm, z-loss) barely lower the best loss but widen the range of learning rates that train,
which a comparison at one learning rate cannot see. A plan gets these curves from a hyper-parameter
axis over ``lr`` (``hparams: [{cross: {lr: [...]}}]``); this module reads them from the rows.

- **Curve** of an arm on a task: per learning rate, the median of the final metric over seeds, with
  the minimum and maximum as a band; a diverged or failed seed has no value and is counted.
- **Range that trains**: the learning rates around the arm's best one (its best median) whose median
  is within the task's margin of that best, contiguous on the grid, and where no seed diverged.
- **Width**, in decades: ``log10(highest / lowest)`` of that range plus one grid step (half a step
  beyond each end, so a range of one grid point is one step wide and widths are comparable across
  grids). The width ratio variant/baseline above 1: the variant trains over a wider range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import axis_keys, cond_key
from .doc import Image, Para, Section, Table
from .summary import Analysis, fmt

UNTRAINED = ("diverged", "failed")


@dataclass
class LrCurve:
    """One arm's final metric per learning rate in one group (task and the settings besides ``lr``)."""

    group: str
    arm: str
    metric: str
    higher_is_better: bool
    values: dict[float, list[float]] = field(default_factory=dict)   # lr -> final values of the seeds that trained
    failed: dict[float, int] = field(default_factory=dict)           # lr -> seeds that diverged or failed

    @property
    def lrs(self) -> list[float]:
        return sorted(set(self.values) | set(self.failed))

    def median(self, lr: float) -> float:
        v = self.values.get(lr) or []
        return float(np.median(v)) if v else math.nan

    def best(self) -> tuple[float, float]:
        """(learning rate, median) of the best median; (nan, nan) when nothing trained."""
        sign = 1.0 if self.higher_is_better else -1.0
        scored = [(sign * self.median(lr), lr) for lr in self.lrs if math.isfinite(self.median(lr))]
        if not scored:
            return math.nan, math.nan
        _, lr = max(scored)
        return lr, self.median(lr)

    def trains(self, margin: float) -> tuple[float, float, float]:
        """(lowest lr, highest lr, width in decades) of the range that trains around the best learning rate."""
        lrs = self.lrs
        best_lr, best = self.best()
        if not math.isfinite(best_lr):
            return math.nan, math.nan, 0.0
        def ok(lr: float) -> bool:
            m = self.median(lr)
            return math.isfinite(m) and abs(m - best) <= margin and not self.failed.get(lr)
        i = lrs.index(best_lr)
        lo = hi = i
        while lo > 0 and ok(lrs[lo - 1]):
            lo -= 1
        while hi < len(lrs) - 1 and ok(lrs[hi + 1]):
            hi += 1
        step = float(np.median(np.diff(np.log10(lrs)))) if len(lrs) > 1 else 0.0
        return lrs[lo], lrs[hi], math.log10(lrs[hi] / lrs[lo]) + step


def lr_curves(rows: list[dict[str, Any]]) -> dict[str, dict[str, LrCurve]]:
    """group -> arm -> curve, for every task whose rows vary ``lr`` over two or more values."""
    axes = axis_keys(rows)
    out: dict[str, dict[str, LrCurve]] = {}
    for r in rows:
        h = dict(r.get("hparams") or {})
        if "lr" not in h:
            continue
        lr = float(h.pop("lr"))
        task, size, _, config = cond_key({**r, "hparams": h}, axes)
        rest = ", ".join(f"{k}={v}" for k, v in sorted(h.items()))
        group = task + (f"@{size}" if len({x["size"] for x in rows}) > 1 else "") + (f" [{rest}]" if rest else "")
        key = json.dumps([task, size, config, h], sort_keys=True)
        curve = out.setdefault(key, {}).setdefault(r["variant"], LrCurve(group, r["variant"], r["primary_metric"],
                                                                          bool(r["higher_is_better"])))
        if r["status"] in UNTRAINED:
            curve.failed[lr] = curve.failed.get(lr, 0) + 1
        elif r.get("primary_value") is not None and math.isfinite(r["primary_value"]):
            curve.values.setdefault(lr, []).append(float(r["primary_value"]))
    named: dict[str, dict[str, LrCurve]] = {}
    for arms in out.values():
        if len({lr for c in arms.values() for lr in c.lrs}) >= 2:
            group = next(iter(arms.values())).group
            named[group if group not in named else f"{group} ({len(named) + 1})"] = arms
    return named


def _draw(group: str, arms: dict[str, LrCurve], folder: Path, name: str) -> str:
    from .plots import new_figure, save

    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    for arm, c in sorted(arms.items(), key=lambda kv: (kv[0] != "baseline", kv[0])):
        lrs = [lr for lr in c.lrs if c.values.get(lr)]
        if not lrs:
            continue
        med = [c.median(lr) for lr in lrs]
        style = {"color": "black", "lw": 2.2, "zorder": 3} if arm == "baseline" else {"lw": 1.3}
        (line,) = ax.plot(lrs, med, marker="o", ms=3, label=arm, **style)
        ax.fill_between(lrs, [min(c.values[lr]) for lr in lrs], [max(c.values[lr]) for lr in lrs],
                        color=line.get_color(), alpha=0.15, lw=0)
        bad = [lr for lr in c.lrs if c.failed.get(lr)]
        if bad:
            ax.plot(bad, [max(med)] * len(bad), "x", color=line.get_color(), ms=6)
    ax.set_xscale("log")
    metric = next(iter(arms.values())).metric
    hib = next(iter(arms.values())).higher_is_better
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel(f"final {metric} ({'higher' if hib else 'lower'} is better)")
    ax.set_title(group, fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, folder / name).name


def lr_section(a: Analysis, folder: Path) -> Section | None:
    """Final metric vs learning rate per arm and task, with the width of the range that trains."""
    curves = lr_curves(a.rows)
    if not curves:
        return None
    s = Section("Learning-rate curves", "lr-curves")
    s.blocks.append(Para("Each arm's final metric at each peak learning rate of the plan's `lr` axis: the median "
                         "over seeds, the band their minimum and maximum, a cross where a seed diverged or failed. "
                         "The range that trains holds the learning rates next to the arm's best whose median is "
                         "within the task's margin of the best and where no seed diverged; its width is in "
                         "decades (plus one grid step). A width ratio above 1: the variant trains over a wider "
                         "range of learning rates than the baseline (Wortsman et al. 2023)."))
    body = []
    for i, (group, arms) in enumerate(curves.items()):
        task = group.split(" ")[0]
        margin, _ = a.settings.margin(task)
        margin = margin if math.isfinite(margin) else 0.0
        base_w = arms["baseline"].trains(margin)[2] if "baseline" in arms else math.nan
        for arm in sorted(arms, key=lambda x: (x != "baseline", x)):
            c = arms[arm]
            lr, best = c.best()
            lo, hi, w = c.trains(margin)
            ratio = w / base_w if arm != "baseline" and base_w > 0 else math.nan
            body.append([group, arm, fmt(lr, 3), fmt(best, 4), f"{fmt(lo, 3)} – {fmt(hi, 3)}", f"{w:.2f}",
                         "—" if arm == "baseline" else fmt(ratio, 3)])
        f = _draw(group, arms, folder, f"lr_curve_{i}.png")
        s.blocks.append(Image(f, f"Final metric against learning rate, {group}",
                              f"{group}: median final metric per learning rate (log axis), band = min–max over "
                              "seeds, baseline in black."))
    s.blocks.insert(1, Table(["Task", "Arm", "Best lr", "Best median", "Trains for lr in", "Width (decades)",
                              "Width ratio vs baseline"], body, id="lr-table",
                             caption="Range that trains: within the task's margin of the arm's best median, "
                                     "contiguous on the grid, no diverged seed"))
    return s
