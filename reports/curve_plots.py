"""Learning curves as small multiples: one panel per model (or setting), training loss above validation.

Each line is the mean over seeds at each logged step; the shaded band (or, for a single
evaluation, the error bar) spans the minimum to the maximum over seeds, so a reader sees the
seed-to-seed spread that every verdict is judged against. A y axis turns logarithmic when its
values are all positive and span a factor of three or more (losses early in training), with
plain-number tick labels. Colours follow :mod:`modtransfer.reports.plots` (Okabe & Ito 2008).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter

from .plots import BASELINE_GREY, BETTER, FONT, TITLE_FONT, new_figure, short, wrap

BAND_ALPHA = 0.18


@dataclass(frozen=True)
class Series:
    """The curves (one per seed) of one model in a panel; ``reference``: the baseline beside a variant."""

    name: str
    curves: Sequence[Sequence[dict]]
    reference: bool = False


def finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def band(curves: Sequence[Sequence[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Steps where some seed logged ``key``, the mean, min and max over seeds there, and how many seeds logged it."""
    steps = sorted({p["step"] for c in curves for p in c if finite(p.get(key))})
    if not steps:
        empty = np.array([])
        return empty, empty, empty, empty, 0
    col = {s: i for i, s in enumerate(steps)}
    m = np.full((len(curves), len(steps)), np.nan)
    for i, c in enumerate(curves):
        for p in c:
            if finite(p.get(key)):
                m[i, col[p["step"]]] = p[key]
    seeds = int(np.isfinite(m).any(axis=1).sum())
    with np.errstate(all="ignore"):
        return np.asarray(steps, float), np.nanmean(m, 0), np.nanmin(m, 0), np.nanmax(m, 0), seeds


def _draw(ax, s: Series, key: str, dodge: float) -> list[float]:
    """Mean line and min-max band of one series; a lone evaluation gets a point with an error bar."""
    steps, mean, lo, hi, n = band(s.curves, key)
    if not steps.size:
        return []
    colour, ls = (BASELINE_GREY, "--") if s.reference else (BETTER, "-")
    if steps.size == 1:
        shift = -dodge if s.reference else dodge
        ax.errorbar(steps + shift, mean, yerr=[mean - lo, hi - mean], fmt="o", color=colour, ms=4, capsize=3, lw=1.2)
    else:
        ax.plot(steps, mean, color=colour, ls=ls, lw=1.3, marker="o" if key != "train_loss" else None, ms=2.5)
        if n > 1:
            ax.fill_between(steps, lo, hi, color=colour, alpha=BAND_ALPHA, lw=0)
    return [*lo.tolist(), *hi.tolist()]


def log_if_it_helps(axes: Sequence, values: Sequence[float]) -> bool:
    """Log y axes (plain-number labels) when every value is positive and they span a factor of 3 or more."""
    vals = [v for v in values if math.isfinite(v)]
    use = bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= 3
    for ax in axes if use else ():
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    return use


def _steps(panels: dict[str, Sequence[Series]], key: str) -> set[float]:
    return {float(x) for ss in panels.values() for s in ss for x in band(s.curves, key)[0]}


def _panels(fig: Figure, n: int, per: int, ratios: list[float]) -> tuple[list[list], tuple[list, list]]:
    """Axes for ``n`` panels of ``per`` rows each, 4 across; returns the panels' axes and the axes per row kind.

    Rows of one kind share their y axis from the start, so every panel's data sets the common range.
    """
    ncols = min(4, max(1, n))
    blocks = max(1, math.ceil(n / ncols))
    axes = fig.subplots(per * blocks, ncols, squeeze=False, sharex=True, gridspec_kw={"height_ratios": ratios})
    cells, groups = [], ([], [])
    for k in range(blocks * ncols):
        b, c = divmod(k, ncols)
        column = [axes[per * b + r, c] for r in range(per)]
        if k >= n:
            for ax in column:
                ax.set_visible(False)
            continue
        for r, ax in enumerate(column):
            if groups[r]:
                ax.sharey(groups[r][0])
            groups[r].append(ax)
        if k + ncols >= n:
            column[-1].set_xlabel("optimizer step", fontsize=FONT)
        cells.append(column)
    return cells, groups


def curves(title: str, panels: dict[str, Sequence[Series]], val_key: str, train_label: str,
           val_label: str) -> Figure:
    """Small multiples: per panel the training loss on top and the validation metric ``val_key`` below."""
    val_steps, train_steps = _steps(panels, val_key), _steps(panels, "train_loss")
    names, per = list(panels), 2 if val_steps else 1
    ncols = min(4, max(1, len(names)))
    ratios = [1.6, 1.3 if len(val_steps) > 1 else 0.9][:per] * max(1, math.ceil(len(names) / ncols))
    fig = new_figure(max(5.5, 3.0 * ncols + 0.7), sum(ratios) * 1.15 + 1.2)
    cells, groups = _panels(fig, len(names), per, ratios)
    every = train_steps | val_steps
    dodge = 0.012 * (max(every) - min(every)) if every else 0.0
    values: tuple[list[float], list[float]] = ([], [])
    for k, (name, title_k, column) in enumerate(zip(names, short(names, 38), cells, strict=True)):
        column[0].set_title(title_k, fontsize=FONT)
        for r, (ax, key, label) in enumerate(zip(column, ("train_loss", val_key), (train_label, val_label),
                                                 strict=False)):
            for s in panels[name]:
                values[r].extend(_draw(ax, s, key, dodge))
            if k % ncols == 0:
                ax.set_ylabel(label, fontsize=FONT)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7, which="both")
    logs = [what for group, vals, what in zip(groups, values, ("training loss", "validation"), strict=True)
            if group and log_if_it_helps(group, vals)]
    handles, labels = _legend(panels)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7, frameon=False)
    note = f"; log scale: {', '.join(logs)}" if logs else ""
    fig.suptitle(wrap(f"{title}: mean over seeds, shaded band or bar = min–max over seeds{note}",
                      fig.get_figwidth() - 0.3), fontsize=TITLE_FONT)
    return fig


def _legend(panels: dict[str, Sequence[Series]]) -> tuple[list, list[str]]:
    """(line, band) pairs for the baseline and the panel's model, and what the spread shows."""
    seeds = max((band(s.curves, "train_loss")[4] for ss in panels.values() for s in ss), default=0)
    own = (Line2D([], [], color=BETTER), Patch(color=BETTER, alpha=BAND_ALPHA))
    if any(s.reference for ss in panels.values() for s in ss):
        handles = [(Line2D([], [], color=BASELINE_GREY, ls="--"), Patch(color=BASELINE_GREY, alpha=BAND_ALPHA)), own]
        labels = ["baseline", "the panel's variant"]
    else:
        handles, labels = [own], ["the panel's model"]
    handles.append(Line2D([], [], marker="o", color="black", ls="", ms=3))
    labels.append(f"validation point; spread over up to {seeds} seed{'s' if seeds != 1 else ''}")
    return handles, labels
