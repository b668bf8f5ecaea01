"""The report's figures, drawn with matplotlib's object API (no pyplot state, Agg canvas).

Every function returns a :class:`~matplotlib.figure.Figure`; :func:`save` writes it as a PNG at
150 dpi. Figures size themselves from their labels and cell counts, so one task, one variant or
twenty long variant names keep the same proportions, and text sits outside the data.

Colours are colour-blind safe: the Okabe & Ito 2008 palette ("Color Universal Design") for
categories; ColorBrewer's diverging RdBu (Brewer 2003; marked colour-blind safe) for signed
effects, blue meaning better; cividis (Nuñez, Anderton & Renslow 2018, PLoS ONE 13:e0199239),
built to read the same with deuteranomaly, for the levels of one metric; sequential Reds for
failure rates. Text in a cell is black or white by the luminance of the cell's colour.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
BETTER, WORSE, NEUTRAL_GREY, BASELINE_GREY = "#0072B2", "#D55E00", "#7F7F7F", "#555555"
MISSING_GREY = "#E5E5E5"
DPI = 150
FONT = 8.0          # tick labels, cell text (points)
TITLE_FONT = 9.5
CHAR_EM = 0.6       # mean glyph width of DejaVu Sans, in ems (used to size figures from labels)


# -- shared helpers -----------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on an Agg canvas (so it can be drawn and measured without pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` (recorded in the file's pHYs chunk)."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08, facecolor="white")
    return path


def short(labels: Sequence[str], limit: int = 40) -> list[str]:
    """``labels`` cut to at most ``limit`` characters, and still telling one from another.

    Cut in the middle (both ends of a composed variant name stay), else at the end; labels that
    no cut keeps distinct are left whole (the figure grows instead).
    """
    def middle(s: str) -> str:
        head = limit // 2
        return s if len(s) <= limit else s[:head] + "…" + s[len(s) - (limit - 1 - head):]

    def tail(s: str) -> str:
        return s if len(s) <= limit else s[:limit - 1] + "…"

    for cut in (middle, tail):
        out = [cut(s) for s in labels]
        if len(set(out)) == len(set(labels)):
            return out
    return list(labels)


def text_inches(labels: Sequence[str], size: float = FONT) -> float:
    """Rough width in inches of the longest of ``labels`` at ``size`` points."""
    return max((len(s) for s in labels), default=0) * size * CHAR_EM / 72


def wrap(text: str, inches: float, size: float = TITLE_FONT) -> str:
    """``text`` wrapped to lines that fit ``inches`` at ``size`` points (paragraphs kept)."""
    chars = max(16, int(inches * 72 / (size * CHAR_EM)))
    return "\n".join(textwrap.fill(p, chars) for p in text.split("\n"))


def _ink(rgba: Sequence[float]) -> str:
    """Black or white text, whichever reads on a background of colour ``rgba``."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def _matrix(ax, values: np.ndarray, texts: Sequence[Sequence[str]], cmap: str | Colormap, norm: Normalize,
            rows: Sequence[str], cols: Sequence[str], size: float = FONT):
    """A labelled colour matrix with a text in every cell; returns the image (for a colour bar)."""
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_facecolor(MISSING_GREY)
    tilt = 0 if max((len(c) for c in cols), default=0) * len(cols) <= 60 else 35
    ax.set_xticks(range(len(cols)), short(cols, 36), rotation=tilt, ha="right" if tilt else "center",
                  rotation_mode="anchor", fontsize=size)
    ax.set_yticks(range(len(rows)), short(rows), fontsize=size)
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="both", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            bg = im.cmap(im.norm(v)) if math.isfinite(v) else (0.9, 0.9, 0.9, 1.0)
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=size, color=_ink(bg))
    return im


def _matrix_size(rows: Sequence[str], cols: Sequence[str], cell_w: float, cell_h: float) -> tuple[float, float]:
    """Figure size for a matrix: labels, cells, colour bar and titles, never collapsing below 5.5 x 3.2 in."""
    row_w = text_inches(short(rows)) + 0.5
    col_len = text_inches(short(cols, 36))
    tilted = max((len(c) for c in cols), default=0) * len(cols) > 60
    overhang = max(0.0, 0.82 * col_len - row_w - 0.5 * cell_w) if tilted else 0.0
    width = row_w + overhang + cell_w * len(cols) + 1.9
    height = cell_h * len(rows) + (0.6 * col_len if tilted else 0.25) + 1.6
    return max(width, 5.5), max(height, 3.2)


def _colorbar(fig: Figure, im, ax, label: str, height: float) -> None:
    """A vertical colour bar whose label is wrapped to the bar's length (it never runs into the title)."""
    cb = fig.colorbar(im, ax=ax, fraction=0.06, pad=0.02, aspect=18)
    cb.ax.tick_params(labelsize=FONT)
    cb.set_label(wrap(label, max(1.0, 0.8 * (height - 1.6)), FONT), fontsize=FONT)


# -- transfer matrix ----------------------------------------------------------------------------
def effect_text(value: float, mark: str) -> str:
    """A cell of the transfer matrix: the effect, then the call's mark."""
    if not math.isfinite(value):
        return mark or "n/a"
    text = f"{value:+.1f}" if abs(value) < 10 else f"{value:+.0f}"
    return (text if text.strip("+-") not in ("0.0", "0") else "0.0") + mark


def heatmap(variants: Sequence[str], labels: Sequence[str], values: np.ndarray, marks: Sequence[Sequence[str]],
            unit: str) -> Figure:
    """Variants x conditions; colour and number = effect (blue = better), then the call's mark."""
    texts = [[effect_text(values[i, j], marks[i][j]) for j in range(len(labels))] for i in range(len(variants))]
    cell_w = min(0.95, max(0.55, 7.5 / max(1, len(labels))))
    w, h = _matrix_size(variants, labels, cell_w, 0.3)
    fig = new_figure(w, h)
    ax = fig.add_subplot()
    finite = np.abs(values[np.isfinite(values)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = _matrix(ax, values, texts, "RdBu", Normalize(-lim, lim), variants, labels)
    ax.set_xlabel("task", fontsize=FONT)
    ax.set_ylabel("variant (best overall at top)", fontsize=FONT)
    _colorbar(fig, im, ax, f"effect vs baseline ({unit}); > 0 = better", h)
    fig.suptitle(wrap(f"Transfer matrix: effect in {unit} per cell; * better or worse after correction, "
                      "'=' no change, ✗ unstable, ○ baseline did not learn", w - 0.2), fontsize=TITLE_FONT)
    return fig


# -- forest plot --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForestRow:
    """One variant in a forest plot: mean paired difference, its interval, every seed's difference, the call."""

    name: str
    mean: float
    ci: tuple[float, float] | None
    seeds: Sequence[float]
    call: str
    flag: bool = False      # an unadjusted interval excluding zero without a call: marked † on its label


def _call_colour(call: str) -> str:
    return BETTER if call == "better" else WORSE if call == "worse" else NEUTRAL_GREY


def forest(label: str, unit: str, rows: Sequence[ForestRow], margin: float, level: float = 0.95,
           direction: str = "") -> Figure:
    """One condition: per variant the seeds' paired improvements (positive = better), their mean and interval
    (FCR-adjusted for a call, else unadjusted), and ± margin. ``direction``: the metric's better way in words
    ("lower val_loss"), said under the axis."""
    names = [f"{name}{' †' if r.flag else ''} (n={len(r.seeds)}{'' if r.ci else ', no interval'})"
             for name, r in zip(short([r.name for r in rows], 36), rows, strict=True)]
    w = 5.6 + text_inches(names)
    fig = new_figure(w, 1.9 + 0.3 * len(rows))
    ax = fig.add_subplot()
    has_margin = math.isfinite(margin) and margin > 0
    if has_margin:
        ax.axvspan(-margin, margin, color="#D9D9D9", lw=0, zorder=0)
    ax.axvline(0.0, color="black", lw=0.8, ls="--", zorder=1)
    rng = np.random.default_rng(0)
    xs = [0.0, -margin, margin] if has_margin else [0.0]
    for y, r in enumerate(rows):
        colour = _call_colour(r.call)
        pts = [d for d in r.seeds if math.isfinite(d)]
        if pts:
            ax.scatter(pts, y + rng.uniform(-0.2, 0.2, len(pts)), s=16, facecolors="none", edgecolors=colour,
                       lw=0.9, alpha=0.85, zorder=2)
        if r.ci is not None:
            ax.plot(r.ci, [y, y], color=colour, lw=2.6, solid_capstyle="butt", zorder=3)
            xs += list(r.ci)
        if math.isfinite(r.mean):
            ax.plot([r.mean], [y], "D", color=colour, ms=6, mec="white", mew=0.8, zorder=4)
        xs += pts
    span = max(xs) - min(xs) or 1.0
    ax.set_xlim(min(xs) - 0.06 * span, max(xs) + 0.06 * span)
    ax.set_yticks(range(len(rows)), names, fontsize=FONT)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_xlabel(f"improvement over the baseline, per paired seed ({unit}); {direction or 'better'} →",
                  fontsize=FONT)
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="D", color=BETTER, ls="", label="better (corrected)"),
               Line2D([], [], marker="D", color=WORSE, ls="", label="worse (corrected)"),
               Line2D([], [], marker="D", color=NEUTRAL_GREY, ls="", label="no call"),
               Line2D([], [], color=NEUTRAL_GREY, lw=2.6,
                      label=f"interval: FCR-adjusted for a call, else unadjusted {int(round(level * 100))}%"),
               Line2D([], [], marker="o", mfc="none", color=NEUTRAL_GREY, ls="", label="one seed")]
    handles.append(Patch(color="#D9D9D9", label=f"± margin {margin:.3g} (no-change zone)") if has_margin
                   else Patch(color="white", label="no margin declared"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    flagged = " † unadjusted interval excludes 0 but no call after correction." if any(r.flag for r in rows) else ""
    fig.suptitle(wrap(f"{label}: improvement over the same-seed baseline (> 0 = better; blue = better, vermillion = "
                      f"worse, grey = no call).{flagged}", w - 0.2), fontsize=TITLE_FONT)
    return fig


# -- agreement, sweep, sensitivity, training failures --------------------------------------------
def agreement_matrix(labels: Sequence[str], tau: np.ndarray, ci: np.ndarray, caveat: str = "",
                     level: float = 0.95) -> Figure:
    """Kendall tau between tasks' rankings of the variants, each with its bootstrap interval (``ci``: C x C x 2)."""
    n = len(labels)
    texts = [["1" if i == j else _tau_text(tau[i, j], ci[i, j]) for j in range(n)] for i in range(n)]
    w, h = _matrix_size(labels, labels, 1.05, 0.55)
    fig = new_figure(w, h + (0.3 if caveat else 0.0))
    ax = fig.add_subplot()
    colours = np.where(np.eye(n, dtype=bool), np.nan, tau)   # the diagonal (always 1) stays grey
    im = _matrix(ax, colours, texts, "RdBu", Normalize(-1, 1), labels, labels, size=7.5)
    ax.set_xlabel("task", fontsize=FONT)
    ax.set_ylabel("task", fontsize=FONT)
    _colorbar(fig, im, ax, "Kendall tau-b of the variants' effects (unitless)", h)
    title = (f"Agreement between tasks: Kendall tau-b of the variants' rankings [{int(round(level * 100))}% "
             "paired bootstrap interval over seeds]")
    fig.suptitle(wrap(title + (f"\n{caveat}" if caveat else ""), w - 0.2), fontsize=TITLE_FONT)
    return fig


def _tau_text(t: float, ci: np.ndarray) -> str:
    if not math.isfinite(t):
        return "n/a"
    if np.all(np.isfinite(ci)):
        return f"{t:+.2f}\n[{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return f"{t:+.2f}\n(no interval)"


def sweep(title: str, rows: Sequence[str], cols: Sequence[str], values: np.ndarray, texts: Sequence[Sequence[str]],
          label: str, higher_is_better: bool, row_axis: str, col_axis: str) -> Figure:
    """One metric over a hyper-parameter grid (cividis, light = better); the best cell(s) framed in black."""
    cell_w = min(1.2, max(0.8, 9.0 / max(1, len(cols))))
    w, h = _matrix_size(rows, cols, cell_w, 0.5)
    fig = new_figure(w, h)
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = Normalize(lo, hi if hi > lo else lo + 1.0)
    im = _matrix(ax, values, texts, "cividis" if higher_is_better else "cividis_r", norm, rows, cols, size=7.5)
    if finite.size:  # frame every cell that ties for the best mean
        best = float(finite.max() if higher_is_better else finite.min())
        for i, j in zip(*np.nonzero(np.isclose(values, best, rtol=1e-12, atol=0.0)), strict=True):
            ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, ec="black", lw=2))
    ax.set_xlabel(col_axis, fontsize=FONT)
    ax.set_ylabel(row_axis, fontsize=FONT)
    _colorbar(fig, im, ax, f"{label}; {'higher' if higher_is_better else 'lower'} is better", h)
    fig.suptitle(wrap(title, w - 0.2), fontsize=TITLE_FONT)
    return fig


def sensitivity(task: str, settings: Sequence[str], series: dict[str, Sequence[float]], ylabel: str) -> Figure:
    """The primary metric over the hyper-parameter settings: baseline (black, dashed) and variants."""
    fig = new_figure(min(12.0, max(6.5, 0.9 * len(settings) + 4)), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(settings))
    styles = ("-", "--", ":", "-.")
    for k, (name, ys) in enumerate(zip(short(list(series), 30), series.values(), strict=True)):
        if name == "baseline":
            ax.plot(x, ys, color="black", ls="--", lw=2, marker="s", label=name)
        else:
            colour = OKABE_ITO[1 + (k - 1) % 7]
            ax.plot(x, ys, color=colour, ls=styles[((k - 1) // 7) % 4], marker="o", label=name)
    ax.set_xticks(x, short(settings, 36), rotation=25, ha="right", fontsize=FONT)
    ax.set_xlabel("hyper-parameter setting", fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.set_title(f"{task}: sensitivity to hyper-parameters (mean over seeds)", fontsize=TITLE_FONT)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def failure_heatmap(title: str, rows: Sequence[str], cols: Sequence[str], values: np.ndarray,
                    texts: Sequence[Sequence[str]], row_axis: str) -> Figure:
    """Share of seeds that never left the plateau (or diverged), per setting; text = failures / seeds."""
    w, h = _matrix_size(rows, cols, 0.9, 0.3)
    fig = new_figure(w, h)
    ax = fig.add_subplot()
    im = _matrix(ax, values, texts, "Reds", Normalize(0.0, 1.0), rows, cols)
    ax.set_ylabel(row_axis, fontsize=FONT)
    _colorbar(fig, im, ax, "failure rate (stayed on the plateau or diverged)", h)
    fig.suptitle(wrap(title, w - 0.2), fontsize=TITLE_FONT)
    return fig


def final_distribution(title: str, labels: Sequence[str], values: Sequence[Sequence[float]], threshold: float,
                       ylabel: str) -> Figure:
    """Final metric of every seed per setting (one dot per seed), with the plateau threshold dashed."""
    fig = new_figure(min(12.0, max(6.0, 0.35 * len(labels) + 3)), 4.5)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for x, ys in enumerate(values):
        if len(ys):
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(ys)), ys, s=12, color=BETTER, alpha=0.7)
    ax.axhline(threshold, color=WORSE, ls="--", lw=1, label="plateau threshold")
    ax.set_xticks(range(len(labels)), short(labels, 36), rotation=60, ha="right", fontsize=7)
    finite = [y for ys in values for y in ys if math.isfinite(y) and y > 0]
    if finite and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.set_title(title, fontsize=TITLE_FONT)
    ax.legend(fontsize=FONT)
    ax.grid(alpha=0.3)
    return fig
