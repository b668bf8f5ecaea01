"""Tests of the report's figures (modtransfer.reports.plots, curve_plots, figures) on constructed analyses.

Figures are drawn for real (Agg) and measured: PNG resolution, the numbers in the cells, text
bounding boxes from the figure's renderer (no title running into a colour-bar label, nothing
outside the figure), seed bands, margin bands and per-seed points, log axes.
"""

from __future__ import annotations

import itertools
import math
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from modtransfer.reports import curve_plots, plots
from modtransfer.reports.analysis import Settings
from modtransfer.reports.figures import by_condition, draw, grid_of, sweep_grid
from modtransfer.reports.summary import Analysis, analyse
from tests.test_reports import TASK_INFO, TASKS, make_row


# -- helpers ----------------------------------------------------------------------------------------
def with_evaluations(row: dict[str, Any], every: int = 1) -> dict[str, Any]:
    """``row`` with its primary metric logged at every ``every``-th curve point (periodic evaluation)."""
    metric, value = row["primary_metric"], row["primary_value"]
    n = len(row["curve"])
    for k, p in enumerate(row["curve"]):
        if k and value is not None and (k % every == 0 or k == n - 1):
            p[metric] = value * (1 + 0.4 * (n - 1 - k) / n)
    return row


def study(variants: list[str], tasks: list[str], seeds: int, hparams: list[dict] | None = None,
          periodic: bool = True) -> Analysis:
    """An analysis of synthetic rows: every (setting, task, seed) for the baseline and each variant."""
    rng = np.random.default_rng(0)
    rows = []
    for hp, task, seed in itertools.product(hparams or [{}], tasks, range(seeds)):
        _, _, mean, sd = TASKS[task]
        for k, v in enumerate(["baseline", *variants]):
            row = make_row(v, task, seed, mean + rng.normal(0, sd) + 0.3 * sd * (k % 3), hparams=hp)
            rows.append(with_evaluations(row) if periodic else row)
    return analyse(rows, {"tasks": TASK_INFO}, Settings(n_boot=100))


def png_dpi(path: Path) -> tuple[float, float]:
    """Resolution in the PNG's pHYs chunk (pixels per metre, unit 1), as dots per inch."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            x, y, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            assert unit == 1
            return x * 0.0254, y * 0.0254
        pos += 12 + length
    raise AssertionError(f"{path.name} has no pHYs chunk")


def _overlap(a: Any, b: Any, tol: float = 2.0) -> bool:
    """Whether two display boxes share more than ``tol`` pixels each way."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def assert_layout_holds(fig: Figure) -> None:
    """Measured with the figure's renderer: the title clears every axes (ticks, labels, the colour bar and
    its label), no two axes' boxes collide, everything lies inside the figure, and no axes collapsed."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    boxes = [ax.get_tightbbox(r) for ax in axes]
    title = fig._suptitle.get_window_extent(r)
    for ax, box in zip(axes, boxes, strict=True):
        what = "the colour bar (with its label)" if ax.get_label() == "<colorbar>" else "a plot"
        assert not _overlap(title, box), f"the title overlaps {what}"
    for (ax1, b1), (ax2, b2) in itertools.combinations(zip(axes, boxes, strict=True), 2):
        assert not _overlap(b1, b2), f"two axes overlap: {ax1.get_label() or ax1}, {ax2.get_label() or ax2}"
    legends = [leg.get_window_extent(r) for leg in fig.legends]
    for box in [title, *boxes, *legends]:
        assert (fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and fig.bbox.y0 - 1 <= box.y0
                and box.y1 <= fig.bbox.y1 + 1), "something lies outside the figure"
    for leg in legends:
        assert not any(_overlap(leg, b) for b in boxes), "the legend overlaps a plot"
    for ax in axes:
        if ax.get_label() != "<colorbar>":
            box = ax.get_window_extent(r)
            assert box.width > 0.35 * plots.DPI and box.height > 0.2 * plots.DPI, "an axes collapsed"


def drawn_quietly(a: Analysis, folder: Path):
    """``draw(a, folder)`` with every warning (tight/constrained layout, glyphs, NaN) an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return draw(a, folder)


# -- transfer matrix ------------------------------------------------------------------------------
def test_heatmap_cells_carry_effects_and_marks() -> None:
    values = np.array([[1.234, -0.5], [np.nan, 12.6], [-0.04, np.nan]])
    marks = [["*", "="], ["", "✗"], ["", "not run"]]
    fig = plots.heatmap(["a", "b", "c"], ["lm", "mt"], values, marks, "baseline seed SDs")
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "+1.2*", (0, 1): "-0.5=", (1, 0): "n/a", (1, 1): "+13✗", (2, 0): "0.0",
                     (2, 1): "not run"}
    dark = [t for t in ax.texts if t.get_text() == "+13✗"][0]
    assert dark.get_color() == "white"  # the strongest effect sits on the darkest blue


@pytest.mark.parametrize(("n_variants", "n_tasks", "name_len"), [(1, 1, 6), (3, 2, 10), (24, 12, 70)])
def test_heatmap_layout_holds_from_one_to_many_tasks(n_variants: int, n_tasks: int, name_len: int) -> None:
    variants = [f"v{k}_" + "x" * (name_len - 3 - len(str(k))) for k in range(n_variants)]
    tasks = [f"task{k} [lr=0.00{k}, init=xavier_uniform]" if n_tasks > 2 else f"t{k}" for k in range(n_tasks)]
    values = np.random.default_rng(1).normal(0, 2, (n_variants, n_tasks))
    values[0, 0] = np.nan
    marks = [["*"] * n_tasks for _ in variants]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.heatmap(variants, tasks, values, marks, "baseline seed SDs")
        assert_layout_holds(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(set(labels)) == n_variants and max(map(len, labels)) <= 40
    assert fig.get_figwidth() <= 16 and fig.get_figheight() <= 14


def test_long_labels_are_cut_but_stay_distinct() -> None:
    names = [f"very_long_variant_name_number_{k}+rmsnorm+rope+swiglu" for k in range(22)]
    cut = plots.short(names, 40)
    assert len(set(cut)) == 22 and max(map(len, cut)) <= 40
    assert plots.short(["a", "b"]) == ["a", "b"]
    same_ends = ["x" * 30 + str(k) + "y" * 30 for k in range(3)]
    assert len(set(plots.short(same_ends, 20))) == 3  # no cut keeps them apart: left whole


# -- forest plot ----------------------------------------------------------------------------------
def test_forest_shows_every_seed_the_interval_and_the_margin_band() -> None:
    rows = [plots.ForestRow("good", 0.05, (0.03, 0.07), [0.04, 0.05, 0.06], "better"),
            plots.ForestRow("one_seed", 0.01, None, [0.01], "too few seeds"),
            plots.ForestRow("bad", -0.04, (-0.06, -0.02), [-0.05, -0.03, -0.04, -0.04], "worse")]
    fig = plots.forest("lm", "Δ val_loss, nats/token", rows, margin=0.02)
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == 8
    (band,) = ax.patches                       # axvspan: a Rectangle since matplotlib 3.9
    assert isinstance(band, Rectangle)
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((-0.02, 0.02))
    intervals = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_linewidth() > 2]
    assert sorted(tuple(ln.get_xdata()) for ln in intervals) == [(-0.06, -0.02), (0.03, 0.07)]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == ["good (n=3)", "one_seed (n=1, no interval)", "bad (n=4)"]
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "± margin 0.02" in legend and "FCR-adjusted for a call, else unadjusted 95%" in legend
    lo, hi = ax.get_xlim()
    assert lo < -0.06 and hi > 0.07
    assert_layout_holds(fig)


def test_forest_without_margin_says_so() -> None:
    fig = plots.forest("mt", "Δ BLEU", [plots.ForestRow("v", 0.2, (0.1, 0.3), [0.1, 0.2, 0.3], "unclear")],
                       margin=math.nan)
    assert not fig.axes[0].patches
    assert "no margin declared" in [t.get_text() for t in fig.legends[0].get_texts()]


# -- learning curves ------------------------------------------------------------------------------
def _curve(seed: int, start: float, end: float, val_every: int | None, metric: str = "val_loss") -> list[dict]:
    pts = [{"step": s, "train_loss": start * (end / start) ** (s / 100) * (1 + 0.03 * seed)} for s in range(10, 101, 10)]
    for k, p in enumerate(pts):
        if val_every and (k + 1) % val_every == 0 or k == len(pts) - 1:
            p[metric] = p["train_loss"] * 1.05
    return pts


def test_curves_have_seed_bands_a_log_axis_and_validation_curves() -> None:
    base = curve_plots.Series("baseline", [_curve(s, 6.0, 1.5, 2) for s in range(3)], reference=True)
    var = curve_plots.Series("swiglu", [_curve(s, 6.0, 1.2, 2) for s in range(3)])
    fig = curve_plots.curves("lm", {"swiglu": [base, var]}, "val_loss", "train_loss", "val_loss")
    train, val = [ax for ax in fig.axes if ax.get_visible()]
    assert train.get_yscale() == "log" and val.get_yscale() == "log"  # 6 -> 1.2 spans a factor of 5
    assert sum(isinstance(c, PolyCollection) for c in train.collections) == 2   # one band per model
    assert sum(isinstance(c, PolyCollection) for c in val.collections) == 2
    val_lines = [ln for ln in val.lines if len(ln.get_xdata()) > 1]
    assert len(val_lines) == 2 and all(len(ln.get_xdata()) == 5 for ln in val_lines)
    title = " ".join(fig._suptitle.get_text().split())
    assert "log scale: training loss, validation" in title and "min–max over seeds" in title
    ticks = " ".join(t.get_text() for t in train.get_yticklabels(minor=True))
    assert ticks.strip() and "$" not in ticks  # plain numbers on the log axis, not mathtext powers
    assert_layout_holds(fig)


def test_every_panel_shows_all_its_data_on_the_shared_y_axis() -> None:
    panels = {"low": [curve_plots.Series("low", [_curve(0, 2.0, 1.8, 2)])],
              "high": [curve_plots.Series("high", [_curve(0, 2.5, 2.3, 2)])]}
    fig = curve_plots.curves("x", panels, "val_loss", "train_loss", "val_loss")
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        ys = np.concatenate([ln.get_ydata() for ln in ax.lines])
        assert lo <= ys.min() and ys.max() <= hi, (ax.get_title(), (lo, hi), (ys.min(), ys.max()))


def test_curves_with_only_a_final_evaluation_and_one_seed() -> None:
    base = curve_plots.Series("baseline", [_curve(0, 2.0, 1.8, None, "val_bleu")], reference=True)
    var = curve_plots.Series("v", [_curve(0, 2.0, 1.7, None, "val_bleu")])
    fig = curve_plots.curves("mt", {"v": [base, var]}, "val_bleu", "train_loss", "val_bleu")
    train, val = [ax for ax in fig.axes if ax.get_visible()]
    assert train.get_yscale() == "linear"  # 2.06 -> 1.7: no log needed
    assert not any(isinstance(c, PolyCollection) for c in train.collections)  # one seed: no band
    assert len(val.containers) == 2  # the final evaluation: a point with a (zero-length) bar per model
    xs = sorted(float(c.lines[0].get_xdata()[0]) for c in val.containers)
    assert xs[0] < 100 < xs[1]  # baseline and variant side by side, not on top of each other


def test_curves_without_validation_metric_draw_one_row() -> None:
    c = [[{"step": s, "train_loss": 1.0 / s} for s in range(1, 50)]]
    fig = curve_plots.curves("x", {"a": [curve_plots.Series("a", c)], "b": [curve_plots.Series("b", c)]},
                             "val_loss", "train_loss", "val_loss")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    assert curve_plots.band([], "train_loss")[4] == 0


# -- agreement and sweep --------------------------------------------------------------------------
def test_agreement_cells_show_tau_with_interval_and_a_caveat_for_few_variants(tmp_path: Path) -> None:
    a = study(["a", "b", "c"], ["lm", "mt"], 4)
    figs = drawn_quietly(a, tmp_path)
    assert figs.agreement
    tau = np.array([[1.0, 0.33], [0.33, 1.0]])
    ci = np.full((2, 2, 2), np.nan)
    ci[0, 1] = ci[1, 0] = (-0.4, 1.0)
    fig = plots.agreement_matrix(["lm", "mt"], tau, ci, "Caveat: only 3 variants ranked.")
    cells = sorted(t.get_text() for t in fig.axes[0].texts)
    assert cells == ["+0.33\n[-0.40, +1.00]", "+0.33\n[-0.40, +1.00]", "1", "1"]
    assert "Caveat: only 3 variants" in fig._suptitle.get_text()
    assert_layout_holds(fig)


def test_grid_of_settings_rows_by_the_widest_axis_in_numeric_order() -> None:
    hps = {f"s{k}": {"lr": lr, "init": init} for k, (lr, init) in
           enumerate(itertools.product([0.01, 0.001, 0.003], ["normal", "xavier_uniform"]))}
    row_axis, rows, col_axis, cols, cell = grid_of(hps)
    assert (row_axis, rows, col_axis, cols) == ("lr", ["0.001", "0.003", "0.01"], "init", ["normal", "xavier_uniform"])
    assert cell["s0"] == (2, 0) and cell["s5"] == (1, 1)
    one = grid_of({"a": {"lr": 0.1}, "b": {"lr": 0.01}})
    assert one[1] == [""] and one[3] == ["0.01", "0.1"]


# -- every study shape ----------------------------------------------------------------------------
def test_baseline_only_sweep_gets_learning_curves_and_a_sweep_heatmap(tmp_path: Path) -> None:
    hps = [{"lr": lr, "init": init} for lr in (1e-3, 3e-3, 1e-2) for init in ("normal", "xavier_uniform")]
    a = study([], ["lm", "mt"], 3, hparams=hps)
    figs = drawn_quietly(a, tmp_path)
    assert not figs.heatmap and not figs.forest and not figs.agreement
    assert set(figs.curves) == {"lm", "mt"} and set(figs.sweep) == {"lm", "mt"}
    for f in figs.all():
        assert (tmp_path / f).is_file()
    fig = plots.sweep("lm", ["0.001", "0.01"], ["normal"], np.array([[2.0], [np.nan]]), [["2\nn=3"], ["no value"]],
                      "val_loss (nats/token)", False, "lr", "init")
    assert [t.get_text() for t in fig.axes[0].texts] == ["2\nn=3", "no value"]
    framed = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert len(framed) == 1 and framed[0].get_xy() == pytest.approx((-0.48, -0.48))  # the best (only) value
    tie = plots.sweep("mt", ["a", "b"], ["x", "y"], np.array([[20.0, 21.0], [21.0, np.nan]]),
                      [["", ""], ["", ""]], "val_bleu", True, "r", "c")
    framed = [p.get_xy() for p in tie.axes[0].patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert sorted(framed) == [(-0.48, 0.52), (0.52, -0.48)]  # both settings that tie for the best BLEU
    assert_layout_holds(fig)


def test_sweep_cells_are_the_baselines_means_over_seeds() -> None:
    a = study([], ["lm"], 3, hparams=[{"lr": 0.001}, {"lr": 0.01}])
    conds, rows = by_condition(a.rows)
    rows["lm [lr=0.01]"]["baseline"][0]["status"] = "diverged"
    hps = {lab: c.hparams for lab, c in conds.items()}
    row_axis, _, col_axis, cols, values, texts = sweep_grid(hps, {lab: rows[lab]["baseline"] for lab in hps})
    assert (row_axis, col_axis, cols) == ("", "lr", ["0.001", "0.01"])
    for j, lab in enumerate(["lm [lr=0.001]", "lm [lr=0.01]"]):
        vals = [r["primary_value"] for r in rows[lab]["baseline"] if r["status"] == "done"]
        assert values[0, j] == pytest.approx(np.mean(vals))
        assert texts[0][j].startswith(f"{np.mean(vals):.4g}\n±")
    assert texts[0][0].endswith("n=3") and texts[0][1].endswith("n=2, 1 failed")


@pytest.mark.parametrize("shape", ["one task, one variant, one seed", "nan cells", "many long variants"])
def test_every_study_shape_draws_without_warnings(tmp_path: Path, shape: str) -> None:
    if shape == "one task, one variant, one seed":
        a = study(["swiglu"], ["lm"], 1, periodic=False)
    elif shape == "nan cells":
        a = study(["a", "b"], ["lm", "mt"], 3)
        a.rows[:] = [r for r in a.rows if not (r["variant"] == "b" and r["task"] == "mt")]
        a = analyse(a.rows, a.meta, a.settings)
    else:
        a = study([f"variant_{k}_with_a_rather_long_name+rmsnorm+rope" for k in range(21)], ["lm"], 2)
    figs = drawn_quietly(a, tmp_path)
    assert figs.heatmap and figs.forest and figs.curves
    for f in figs.all():
        assert min(png_dpi(tmp_path / f)) >= 149.9


def test_png_resolution_is_recorded_and_matches_the_pixels(tmp_path: Path) -> None:
    fig = plots.heatmap(["a"], ["lm"], np.array([[0.5]]), [["*"]], "SDs")
    path = plots.save(fig, tmp_path / "h.png")
    assert png_dpi(path) == pytest.approx((150, 150), abs=0.1)
    from PIL import Image

    with Image.open(path) as im:
        assert im.info["dpi"][0] == pytest.approx(150, abs=0.1)
        assert im.width >= 0.9 * fig.get_figwidth() * 150
