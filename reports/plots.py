"""The report's figures, drawn with matplotlib's object API (no pyplot state, Agg canvas).

Colours are colour-blind safe: the Okabe & Ito 2008 palette ("Color Universal Design") for
categories, and ColorBrewer's diverging RdBu (Brewer 2003; marked colour-blind safe) for
effects, blue meaning better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
BETTER, WORSE, NEUTRAL_GREY, BASELINE_GREY = "#0072B2", "#D55E00", "#7F7F7F", "#555555"
DPI = 90


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def heatmap(path: Path, variants: Sequence[str], labels: Sequence[str], values: np.ndarray,
            marks: Sequence[Sequence[str]], unit: str) -> Path:
    """Variants x conditions; colour = effect (blue = better), text = the call's symbol."""
    fig = Figure(layout="constrained", figsize=(2.2 + 1.3 * len(labels), 1.2 + 0.34 * len(variants)))
    ax = fig.add_subplot()
    finite = np.abs(values[np.isfinite(values)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_facecolor("#DDDDDD")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(variants)), variants)
    for i in range(len(variants)):
        for j in range(len(labels)):
            v = values[i, j]
            light = math.isfinite(v) and abs(v) > 0.6 * lim
            ax.text(j, i, marks[i][j], ha="center", va="center", fontsize=9, color="white" if light else "black")
    ax.set_xlabel("task")
    ax.set_ylabel("variant (best overall at top)")
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label(f"effect vs baseline ({unit}); > 0 = better")
    ax.set_title("Transfer matrix  (* = better/worse after correction, = no change, ✗ = unstable, ○ = baseline did not learn)", fontsize=10)
    return _save(fig, path)


def forest(path: Path, label: str, unit: str, items: Sequence[tuple[str, float, float, float, str]]) -> Path:
    """One condition: per variant the mean signed difference with its interval (item = name, mean, lo, hi, call)."""
    fig = Figure(layout="constrained", figsize=(7.5, 1.2 + 0.3 * len(items)))
    ax = fig.add_subplot()
    for y, (_name, mean, lo, hi, call) in enumerate(items):
        colour = BETTER if call == "better" else WORSE if call == "worse" else NEUTRAL_GREY
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [y, y], color=colour, lw=2)
        if math.isfinite(mean):
            ax.plot([mean], [y], "o", color=colour, ms=5)
    ax.axvline(0.0, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(items)), [it[0] for it in items])
    ax.invert_yaxis()
    ax.set_xlabel(f"variant vs baseline ({unit}); > 0 = better")
    ax.set_ylabel("variant")
    ax.set_title(f"{label}: mean paired difference, 95% bootstrap interval", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _mean_curve(curves: Sequence[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = sorted({p["step"] for c in curves for p in c if isinstance(p.get(key), int | float)})
    if not steps:
        return np.array([]), np.array([])
    col = {s: i for i, s in enumerate(steps)}
    m = np.full((len(curves), len(steps)), np.nan)
    for i, c in enumerate(curves):
        for p in c:
            v = p.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                m[i, col[p["step"]]] = v
    ok = np.isfinite(m).any(axis=0)
    with np.errstate(all="ignore"):
        return np.asarray(steps)[ok], np.nanmean(m[:, ok], axis=0)


def curves(path: Path, label: str, ylabel: str, baseline: Sequence[list[dict]],
           variants: dict[str, Sequence[list[dict]]], key: str = "train_loss") -> Path:
    """Small multiples: the seed-mean curve of ``key`` for the baseline (grey) and each variant (blue)."""
    names = list(variants)
    ncols = min(4, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = Figure(layout="constrained", figsize=(3.4 * ncols, 2.5 * nrows + 0.4))
    bx, by = _mean_curve(baseline, key)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        ax.plot(bx, by, color=BASELINE_GREY, ls="--", lw=1.2, label="baseline")
        vx, vy = _mean_curve(variants[names[k]], key)
        ax.plot(vx, vy, color=BETTER, lw=1.4, label=names[k])
        ax.set_title(names[k], fontsize=9)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if k + ncols >= len(names):
            ax.set_xlabel("optimizer step", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{label}: {key} (mean over seeds), baseline dashed", fontsize=10)
    return _save(fig, path)


def agreement_matrix(path: Path, labels: Sequence[str], tau: np.ndarray) -> Path:
    """Kendall tau between tasks' rankings of the variants."""
    n = len(labels)
    fig = Figure(layout="constrained", figsize=(2.5 + 0.9 * n, 1.8 + 0.7 * n))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(tau), cmap="RdBu", vmin=-1, vmax=1)
    ax.set_facecolor("#DDDDDD")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            txt = f"{tau[i, j]:.2f}" if math.isfinite(tau[i, j]) else "n/a"
            ax.text(j, i, txt, ha="center", va="center", fontsize=9,
                    color="white" if math.isfinite(tau[i, j]) and abs(tau[i, j]) > 0.6 else "black")
    ax.set_xlabel("task")
    ax.set_ylabel("task")
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("Kendall tau-b of variants' effects (unitless)")
    ax.set_title("Agreement between tasks", fontsize=10)
    return _save(fig, path)


def sensitivity(path: Path, task: str, settings: Sequence[str], series: dict[str, Sequence[float]],
                ylabel: str) -> Path:
    """The primary metric over the hyper-parameter settings: baseline (black, dashed) and variants."""
    fig = Figure(layout="constrained", figsize=(max(6.0, 1.2 * len(settings) + 3), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(settings))
    styles = ("-", "--", ":", "-.")
    for k, (name, ys) in enumerate(series.items()):
        if name == "baseline":
            ax.plot(x, ys, color="black", ls="--", lw=2, marker="s", label=name)
        else:
            colour = OKABE_ITO[1 + (k - 1) % 7]
            ax.plot(x, ys, color=colour, ls=styles[((k - 1) // 7) % 4], marker="o", label=name)
    ax.set_xticks(x, settings, rotation=20, ha="right")
    ax.set_xlabel("hyper-parameter setting")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: sensitivity to hyper-parameters (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def failure_heatmap(path: Path, title: str, rows: Sequence[str], cols: Sequence[str], values: np.ndarray,
                    texts: Sequence[Sequence[str]], row_axis: str) -> Path:
    """Share of seeds that never left the plateau (or diverged), per setting; text = failures / seeds."""
    fig = Figure(layout="constrained", figsize=(2.5 + 1.1 * len(cols), 1.4 + 0.32 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_facecolor("#DDDDDD")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=8,
                    color="white" if math.isfinite(v) and v > 0.6 else "black")
    ax.set_ylabel(row_axis)
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("failure rate (stayed on the plateau or diverged)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def final_distribution(path: Path, title: str, labels: Sequence[str], values: Sequence[Sequence[float]],
                       threshold: float, ylabel: str) -> Path:
    """Final metric of every seed per setting (one dot per seed), with the plateau threshold dashed."""
    fig = Figure(layout="constrained", figsize=(max(6.0, 0.35 * len(labels) + 3), 4.5))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for x, ys in enumerate(values):
        if len(ys):
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(ys)), ys, s=12, color=BETTER, alpha=0.7)
    ax.axhline(threshold, color=WORSE, ls="--", lw=1, label="plateau threshold")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    finite = [y for ys in values for y in ys if math.isfinite(y) and y > 0]
    if finite and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
