"""The headline per variant (intersection-union test across tasks) and the report's first screen.

The numbers the page prints are recomputed here from the store's rows, not read back from the analysis.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from modtransfer.reports import build_report, stats
from modtransfer.reports.analysis import Comparison, Condition, Gate, Settings
from modtransfer.reports.headline import headlines, iut
from modtransfer.reports.summary import analyse
from modtransfer.reports.verdicts import verdict
from modtransfer.run.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_reports import TASK_INFO, TASKS, make_row, write_store  # noqa: E402

UNITS = {"lm": "nats per character", "mt": "BLEU (0-100)"}


# -- the statistics under the headline ------------------------------------------------------------
def test_directional_p_is_the_two_sided_p_split_by_sign() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, size=(500, 6))
    better, worse = stats.directional_p(d)
    mean, _, _, p_two = stats.paired_t(d)
    assert np.allclose(np.where(mean > 0, better, worse), p_two)
    assert (np.where(mean > 0, worse, better) >= 0.5 - 1e-12).all()   # the other direction never passes
    one = [0.2, 0.1, 0.3]
    assert stats.directional_p(one)[0] == pytest.approx(stats.paired_t(one)[3])
    assert math.isnan(float(stats.directional_p([0.1])[0]))


def test_directional_p_over_looks_is_the_smallest_weighted_look() -> None:
    d = np.array([0.3, 0.1, 0.5, 0.2, 0.05, 0.4, 0.1])
    w = stats.spending_weights([3, 6, 9, 12])
    better, _ = stats.directional_p(d, [3, 6, 9, 12])
    expect = min(stats.directional_p(d[:3])[0] / w[0], stats.directional_p(d[:6])[0] / w[1])
    assert float(better) == pytest.approx(min(1.0, float(expect)))      # the 7th value waits for its look


def test_iut_takes_the_largest_p_and_corrects_across_variants_only() -> None:
    # 1 row, 3 variants, 2 tasks
    pb = np.array([[[0.005, 0.01], [0.001, 0.6], [0.03, 0.04]]])
    pw = np.ones_like(pb)
    ps = np.array([[[0.5, 0.5], [0.5, 0.5], [np.nan, 0.01]]])
    kinds, p, q = iut(pb, pw, ps, 0.05)
    assert p["better"][0] == pytest.approx([0.01, 0.6, 0.04])
    assert q["better"][0] == pytest.approx([0.03, 0.6, 0.06])       # BH: 0.01 * 3 / 1 and 0.04 * 3 / 2
    assert list(kinds[0]) == ["better everywhere", "", ""]
    assert math.isnan(p["no change"][0, 2]) and math.isnan(q["no change"][0, 2])         # untestable: out of the family
    assert q["no change"][0, :2] == pytest.approx([0.5, 0.5])                            # a family of two


def _comp(variant: str, task: str, diffs: list[float], *, margin: float = 0.02, gate: str = "learned",
          failed: int = 0, call: str = "") -> Comparison:
    cond = Condition(task, "tiny", "{}", "val_loss", False, task, task)
    c = Comparison(variant, cond, seeds=list(range(len(diffs))), diffs=diffs, n_failed=failed, margin=margin,
                   gate=Gate(gate, ""), call=call)
    c.n_used = len(diffs)
    if len(diffs) >= 2:
        c.p_value = float(stats.paired_t(diffs)[3])
        c.p_equiv = float(stats.tost_pvalue(diffs, margin))
    return c


UP = [0.10, 0.12, 0.09, 0.11, 0.10, 0.095]
FLAT = [0.001, -0.001, 0.0005, -0.0005, 0.0, 0.0002]


def test_headlines_kinds_blockers_and_left_out_tasks() -> None:
    s = Settings()
    comps = [_comp("up", "a", UP, call="better"), _comp("up", "b", UP, call="better"),
             _comp("up", "c", [-x for x in UP], gate="not learned", call="not learned"),
             _comp("down", "a", [-x for x in UP], call="worse"), _comp("down", "b", [-x for x in UP], call="worse"),
             _comp("same", "a", FLAT, call="no change"), _comp("same", "b", FLAT, call="no change"),
             _comp("mix", "a", UP, call="better"), _comp("mix", "b", [-x for x in UP], call="worse"),
             _comp("half", "a", UP, call="better"), _comp("half", "b", [0.3, -0.2, 0.25, -0.3, 0.1, -0.1],
                                                          call="unclear"),
             _comp("few", "a", UP, call="better"), _comp("few", "b", UP[:2], call="too few seeds"),
             _comp("wob", "a", UP, call="better"), _comp("wob", "b", UP[:4], failed=2, call="unstable"),
             _comp("solo", "a", UP, call="better")]
    h = headlines(comps, s)
    assert {v: x.kind for v, x in h.items()} == {
        "up": "better everywhere", "down": "worse everywhere", "same": "no change everywhere", "mix": "mixed",
        "half": "unclear", "few": "unclear", "wob": "unstable", "solo": "better everywhere"}
    assert h["up"].left_out == ["c (baseline did not learn)"] and len(h["up"].tests) == 2
    assert h["up"].p["better"] == pytest.approx(max(stats.paired_t(UP)[3], stats.paired_t(UP)[3]))
    family = ["up", "down", "same", "mix", "half", "solo"]          # "few" untestable, "wob" unstable
    assert all(h[v].family == len(family) for v in family)
    q = stats.benjamini_hochberg([h[v].p["better"] for v in family])
    assert [h[v].q["better"] for v in family] == pytest.approx(list(q))
    assert h["half"].claim == "better" and h["half"].blockers[0].startswith("b (unclear, p ")
    assert "blocked by b" in h["half"].why
    assert h["few"].blockers == ["b (too few seeds)"] and math.isnan(h["few"].p["better"])
    assert "one task only" in h["solo"].why and "left out: c (baseline did not learn)" in h["up"].why
    assert h["mix"].blockers == ["a (better)", "b (worse)"]


def test_verdict_follows_the_headline() -> None:
    assert verdict(["better", "unclear"], "better everywhere")[0] == "transfers"
    assert verdict(["better"], "better everywhere")[0] == "task-specific"          # one task: transfer untested
    assert verdict(["worse", "unclear"], "worse everywhere")[0] == "hurts"
    assert verdict(["no change", "unclear"], "no change everywhere")[0] == "neutral"
    assert verdict(["better", "better"], "unclear")[0] == "inconclusive"            # the headline did not pass
    assert verdict(["no change", "no change"], "unclear")[0] == "inconclusive"
    assert verdict(["better", "no change"], "mixed")[0] == "task-specific"
    assert verdict(["worse", "no change"], "mixed")[0] == "hurts"
    assert verdict(["better", "worse"], "mixed")[0] == "mixed"
    assert verdict(["better", "unstable"], "unstable")[0] == "unstable"


def test_report_headlines_are_the_vectorised_test_on_the_same_p_values(tmp_path: Path) -> None:
    """The objects' headline equals :func:`iut` on per-task p-values recomputed from the store's rows."""
    effects = {(v, t): e for v, e in [("a", 0.5), ("b", 4.0), ("c", -1.5), ("d", 0.0)] for t in TASKS}
    write_store(tmp_path, effects, seeds=5, noise=1.0)
    store = Store(tmp_path / "results.sqlite")
    a = analyse(store.rows(), store.meta(), Settings(n_boot=200))
    diffs = _diffs(store.rows())
    names = sorted(a.headlines)
    pb = np.array([[[stats.directional_p(diffs[(v, t)])[0] for t in TASKS] for v in names]])
    pw = np.array([[[stats.directional_p(diffs[(v, t)])[1] for t in TASKS] for v in names]])
    ps = np.array([[[stats.tost_pvalue(diffs[(v, t)], TASK_INFO[t]["margin"]) for t in TASKS] for v in names]])
    kinds, p, q = iut(pb, pw, ps, 0.05)
    for j, v in enumerate(names):
        h = a.headlines[v]
        assert [h.p[k] for k in ("better", "worse", "no change")] == pytest.approx(
            [p["better"][0, j], p["worse"][0, j], p["no change"][0, j]])
        assert h.q["better"] == pytest.approx(q["better"][0, j])
        assert (h.kind if h.kind.endswith("everywhere") else "") == kinds[0, j]
    assert a.headlines["b"].kind == "better everywhere" and a.verdicts["b"][0] == "transfers"


def _diffs(rows: list[dict]) -> dict[tuple[str, str], np.ndarray]:
    """Signed paired differences (> 0 = better) per (variant, task), recomputed from the rows."""
    base = {(r["task"], r["seed"]): r["primary_value"] for r in rows if r["variant"] == "baseline"}
    out: dict[tuple[str, str], list[float]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r["variant"] != "baseline" and r["status"] == "done":
            sign = 1.0 if TASKS[r["task"]][1] else -1.0
            out.setdefault((r["variant"], r["task"]), []).append(sign * (r["primary_value"] - base[(r["task"],
                                                                                                  r["seed"])]))
    return {k: np.asarray(v) for k, v in out.items()}


# -- the first screen ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    run = tmp_path_factory.mktemp("front")
    write_store(run, {("up", "lm"): 3.0, ("up", "mt"): 3.0, ("down", "lm"): -3.0, ("down", "mt"): 0.0},
                seeds=6, noise=0.4)
    build_report(run, wandb_mode="disabled", settings=Settings(n_boot=200))
    out = run / "report"
    return run, (out / "index.html").read_text(encoding="utf-8"), (out / "report.md").read_text(encoding="utf-8")


def _row(md: str, first: str, table: str) -> list[str]:
    block = md.split(table, 1)[1]
    line = next(ln for ln in block.splitlines() if ln.startswith(f"| {first} "))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_first_screen_order_headline_then_design_then_main_table(page: tuple[Path, str, str]) -> None:
    _, html_page, _ = page
    order = [html_page.index(x) for x in ('id="headline"', 'id="caveats"', 'id="headline-table"',
                                          'id="design-table"', '<section id="main-table"')]
    assert order == sorted(order)
    assert re.findall(r'<section id="([^"]+)"', html_page)[0] == "main-table"


def test_headline_table_says_the_answer_with_signs_and_units(page: tuple[Path, str, str]) -> None:
    run, _, md = page
    rows = Store(run / "results.sqlite").rows()
    diffs = _diffs(rows)
    up = _row(md, "up", "The headline: one intersection-union test")
    assert up[1] == "better everywhere"
    p_up = max(float(stats.directional_p(diffs[("up", t)])[0]) for t in TASKS)
    assert up[2].startswith(f"better: p {p_up:.2g}, q ")
    for t in TASKS:
        d = diffs[("up", t)]
        assert f"{t}: better (Δ {d.mean():+.3g} {UNITS[t]}, p(better) {stats.directional_p(d)[0]:.2g})" in up[3]
    down = _row(md, "down", "The headline: one intersection-union test")
    d_lm = diffs[("down", "lm")]
    assert d_lm.mean() < 0 and f"lm: worse (Δ {d_lm.mean():+.3g} nats per character" in down[3]   # higher loss = worse
    assert down[1] in ("mixed", "unclear") and down[1] != "worse everywhere"
    assert "Berger 1982" in md and "Benjamini-Hochberg across the 2 variant(s)" in md


def test_design_table_recomputed_from_the_rows(page: tuple[Path, str, str]) -> None:
    run, _, md = page
    diffs = _diffs(Store(run / "results.sqlite").rows())
    for t in TASKS:
        ds = [diffs[(v, t)] for v in ("up", "down")]
        sd = math.sqrt(sum(np.var(d, ddof=1) * (len(d) - 1) for d in ds) / sum(len(d) - 1 for d in ds))
        det = stats.detectable_effect(sd, 6, 0.05)
        margin = TASK_INFO[t]["margin"]
        need = stats.seeds_needed(margin, sd, 0.05)
        row = _row(md, t, "What this run could call")
        assert row[1] == ("val_loss (↓)" if t == "lm" else "val_bleu (↑)") and row[2] == "6"
        assert row[3] == f"{sd:.3g} {UNITS[t]} (measured: paired differences, pooled over 2 comparison(s))"
        assert row[4] == f"{det:.3g} {UNITS[t]}" and row[5] == f"{margin:.3g} {UNITS[t]} (task)"
        assert row[6] == str(need)
        assert det < margin and need <= 6        # low noise here: one margin is callable with these seeds
    power = stats.iut_power([TASK_INFO[t]["margin"] for t in TASKS],
                            [float(_row(md, t, "What this run could call")[3].split()[0]) for t in TASKS], 6)
    assert f"probability {power:.2f} at these seeds" in md


def test_design_falls_back_to_the_baseline_then_the_declared_noise(tmp_path: Path) -> None:
    """One variant seed: no paired SD, so the baseline's seed SD × √2; one baseline seed too: the declared SD × √2."""
    for run, base_seeds in ((tmp_path / "base", 4), (tmp_path / "declared", 1)):
        store = Store(run / "results.sqlite")
        vals = [2.0, 2.03, 1.98, 2.01][:base_seeds]
        for s, v in enumerate(vals):
            store.record(make_row("baseline", "lm", s, v))
        store.record(make_row("gelu", "lm", 0, 1.99))
        store.set_meta("tasks", TASK_INFO)
        build_report(run, wandb_mode="disabled", settings=Settings(n_boot=200))
        row = _row((run / "report" / "report.md").read_text(encoding="utf-8"), "lm", "What this run could call")
        if base_seeds > 1:
            sd = math.sqrt(2) * float(np.std(vals, ddof=1))
            assert row[3] == f"{sd:.3g} nats per character (baseline seed SD × √2 ({base_seeds} seeds; no paired differences yet))"
        else:
            sd = math.sqrt(2) * TASK_INFO["lm"]["noise_sd"]
            assert row[3].startswith(f"{sd:.3g} nats per character (task's declared seed SD × √2")
        assert row[2] == "1" and row[4] == "— (fewer than 2 seeds)"
        assert row[6] == str(stats.seeds_needed(TASK_INFO["lm"]["margin"], sd, 0.05))


def test_results_json_carries_headlines_and_design(page: tuple[Path, str, str]) -> None:
    run, _, _ = page
    res = json.loads((run / "report" / "results.json").read_text(encoding="utf-8"))
    assert res["headlines"]["up"]["kind"] == "better everywhere" and res["headlines"]["up"]["family"] == 2
    assert {d["group"] for d in res["design"]} == set(TASKS) and all(d["sd_source"] == "paired" for d in res["design"])
