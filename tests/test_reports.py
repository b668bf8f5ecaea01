"""Tests of the transfer analysis and the report (modtransfer.reports), on synthetic results stores."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modtransfer.core.errors import UserError
from modtransfer.reports import build_report, stats
from modtransfer.reports.agreement import agreement
from modtransfer.reports.analysis import Comparison, Condition, Settings, compare
from modtransfer.reports.reference import PAPER_NAMES, compare_reference, load_table
from modtransfer.reports.summary import analyse
from modtransfer.reports.verdicts import VERDICTS, call, combine, verdict
from modtransfer.run.store import Store

TASKS = {"lm": ("val_loss", False, 2.0, 0.02), "mt": ("val_bleu", True, 20.0, 0.3)}
#: Declared gate info per synthetic task: margin 1 SD, trivial scores far from the baseline.
TASK_INFO = {"lm": {"margin": 0.02, "noise_sd": 0.02, "trivial": 3.5, "trivial_name": "bigram"},
             "mt": {"margin": 0.3, "noise_sd": 0.3, "trivial": 1.0, "trivial_name": "copy"}}


def make_row(variant: str, task: str, seed: int, value: float | None, *, status: str = "done",
             hparams: dict[str, Any] | None = None, benchmark: str = "synthetic", params: int = 100_000,
             error: str | None = None) -> dict[str, Any]:
    """A realistic results-store row for one cell."""
    metric, hib, _, _ = TASKS[task]
    hparams = hparams or {}
    key = json.dumps([benchmark, variant, task, seed, hparams], sort_keys=True)
    start = 4.0 if not hib else 1.0
    final = value if value is not None else float("nan")
    curve = [{"step": s, "train_loss": start + (final - start if not hib else -1.5) * s / 100 + 0.01 * seed}
             for s in range(0, 101, 20)]
    curve[-1][metric] = value
    return {
        "cell_id": hashlib.sha1(key.encode()).hexdigest()[:16], "benchmark": benchmark, "variant": variant,
        "task": task, "seed": seed, "size": "tiny", "hparams": hparams, "status": status,
        "primary_metric": metric, "higher_is_better": int(hib), "primary_value": value,
        "metrics": {metric: value} if value is not None else {}, "curve": curve if status == "done" else curve[:2],
        "params": params, "flops_per_token": 6.0 * params, "tokens_per_s": 5e4 * 100_000 / params,
        "train_s": 10.0, "wall_s": 12.0, "startup_s": 1.5, "steps": 100 if status == "done" else 30,
        "failed_step": None if status == "done" else 30, "error": error,
        "spec": {"d_model": 64, "n_layers": 2}, "task_config": {}, "budget": {"steps": 100, **hparams},
        "env": {"versions": {"torch": "2.13.0", "python": "3.11"}, "git_commit": "abc1234", "host": "test"},
    }


def write_store(run_dir: Path, effects: dict[tuple[str, str], float], seeds: int = 8, *, noise: float = 0.0,
                failed: dict[tuple[str, str], int] | None = None, hparams: list[dict[str, Any]] | None = None,
                skipped: list[dict[str, str]] | None = None, benchmark: str = "synthetic") -> Store:
    """A store where each (variant, task) gets ``effect`` (in the task's SDs, > 0 = better) on shared seeds.

    The baseline's seed effect is shared by all variants (paired design); ``noise`` (in SDs) is each
    variant's own per-seed noise; ``failed[(variant, task)]`` seeds diverge instead.
    """
    store = Store(run_dir / "results.sqlite")
    rng = np.random.default_rng(123)
    variants = sorted({v for v, _ in effects})
    for hp in hparams or [{}]:
        for task, (_, hib, mean, sd) in TASKS.items():
            seed_effect = rng.normal(0, sd, size=seeds)
            sign = 1.0 if hib else -1.0
            for s in range(seeds):
                store.record(make_row("baseline", task, s, mean + seed_effect[s], hparams=hp, benchmark=benchmark))
            for v in variants:
                if (v, task) not in effects:
                    continue
                n_bad = (failed or {}).get((v, task), 0)
                for s in range(seeds):
                    own = rng.normal(0, noise * sd)
                    value = mean + seed_effect[s] + sign * effects[(v, task)] * sd + own
                    if s < n_bad:
                        store.record(make_row(v, task, s, None, status="diverged", hparams=hp, benchmark=benchmark,
                                              error="Traceback ...\nDivergenceError: loss is NaN at step 30"))
                    else:
                        store.record(make_row(v, task, s, value, hparams=hp, params=110_000, benchmark=benchmark))
    store.set_meta("plan", {"name": benchmark, "variants": variants, "tasks": list(TASKS), "seeds": seeds})
    store.set_meta("tasks", TASK_INFO)
    store.set_meta("skipped", skipped or [])
    return store


def comps_of(run_dir: Path, settings: Settings | None = None) -> dict[tuple[str, str], Comparison]:
    store = Store(run_dir / "results.sqlite")
    settings = settings or Settings.from_meta(store.meta(), n_boot=2000)
    return {(c.variant, c.cond.task): c for c in compare(store.rows(), settings)}


# -- statistics ---------------------------------------------------------------------------------
def test_identical_runs_give_zero_effect_and_interval_containing_zero(tmp_path: Path) -> None:
    write_store(tmp_path, {("same", "lm"): 0.0, ("same", "mt"): 0.0})
    for task in TASKS:
        c = comps_of(tmp_path)[("same", task)]
        assert c.n == 8 and c.mean_diff == pytest.approx(0.0, abs=1e-12)
        assert c.ci is not None and c.ci[0] <= 0.0 <= c.ci[1]
        assert c.p_value == 1.0 and c.call == "no change"


@pytest.mark.parametrize("task", ["lm", "mt"])
@pytest.mark.parametrize("planted", [3.0, -3.0])
def test_planted_effect_found_with_right_sign(tmp_path: Path, task: str, planted: float) -> None:
    write_store(tmp_path, {("v", task): planted, ("w", task): 0.0}, noise=0.3)
    c = comps_of(tmp_path)[("v", task)]
    _, hib, _, sd = TASKS[task]
    assert math.copysign(1, c.mean_diff) == math.copysign(1, planted)
    assert c.mean_diff == pytest.approx(planted * sd, rel=0.25)
    assert c.raw_diff == pytest.approx(c.mean_diff if hib else -c.mean_diff)
    assert c.ci[0] > 0 if planted > 0 else c.ci[1] < 0
    assert c.call == ("better" if planted > 0 else "worse")
    assert c.p_improve == (1.0 if planted > 0 else 0.0)


def test_bootstrap_is_seeded_and_reproducible() -> None:
    d = [0.3, -0.1, 0.5, 0.2, 0.05]
    s = Settings(n_boot=3000)
    a = stats.bootstrap_ci(d, s.rng("v", "lm"), n_boot=3000)
    b = stats.bootstrap_ci(d, Settings(n_boot=3000).rng("v", "lm"), n_boot=3000)
    c = stats.bootstrap_ci(d, Settings(seed=7).rng("v", "lm"), n_boot=3000)
    assert a == b and a != c
    assert a[0] < np.mean(d) < a[1] and min(d) <= a[0] and a[1] <= max(d)
    assert stats.bootstrap_ci([0.4], s.rng("x")) is None


def test_sign_flip_exact_pvalues() -> None:
    assert stats.sign_flip_pvalue([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert stats.sign_flip_pvalue([1.0] * 6) == pytest.approx(2 / 64) == stats.min_sign_flip_p(6)
    # |mean| over the sign patterns of (1, 3): 2, 1, 1, 2 -> two of four reach the observed 2
    assert stats.sign_flip_pvalue([1.0, 3.0]) == pytest.approx(0.5)
    assert stats.sign_flip_pvalue([-1.0, 3.0]) == pytest.approx(1.0)  # observed 1: every pattern reaches it
    assert stats.sign_flip_pvalue([0.0, 0.0]) == 1.0
    mc = stats.sign_flip_pvalue([1.0] * 20, np.random.default_rng(0), n_perm=2000)
    assert 0 < mc <= 3 / 2001


def test_holm_and_bh_against_hand_computed_example() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)=0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04, running minimum from the top
    assert stats.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        stats.adjust(p, "bonferonni")


def test_kendall_tau_on_known_rankings() -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    assert stats.kendall_tau(x, x) == pytest.approx(1.0)
    assert stats.kendall_tau(x, x[::-1]) == pytest.approx(-1.0)
    assert stats.kendall_tau(x, [1.0, 2.0, 4.0, 3.0]) == pytest.approx(4 / 6)
    assert stats.kendall_tau([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(2 / math.sqrt(6))  # tau-b
    assert stats.kendall_tau([1.0, np.nan, 2.0, 3.0], [3.0, 9.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(stats.kendall_tau([1.0, 1.0], [1.0, 2.0]))


def test_task_agreement_same_and_reversed_rankings(tmp_path: Path) -> None:
    same = {(v, t): e for v, e in [("a", 3.0), ("b", 1.0), ("c", -1.0), ("d", -3.0)] for t in TASKS}
    write_store(tmp_path, same, noise=0.1)
    g = agreement(list(comps_of(tmp_path).values()), Settings(n_boot=500), n_boot=300)
    assert g.pairs[0]["tau"] == pytest.approx(1.0) and g.mean_tau == pytest.approx(1.0)
    assert g.pairs[0]["ci"] is not None and g.pairs[0]["ci"][0] > 0.3
    assert all(t == pytest.approx(1.0) for t in g.loo.values())
    rev = {(v, "lm"): e for v, e in [("a", 3.0), ("b", 1.0), ("c", -1.0)]}
    rev |= {(v, "mt"): -e for (v, _), e in rev.items()}
    write_store(tmp_path / "rev", rev, noise=0.1)
    g = agreement(list(comps_of(tmp_path / "rev").values()), n_boot=300)
    assert g.mean_tau == pytest.approx(-1.0)


# -- calls and verdicts ------------------------------------------------------------------------
def _comp(diffs: list[float], base: float = 2.0, failed: int = 0, margin: float = 0.02,
          gate: str = "learned") -> Comparison:
    """One comparison with its p-values computed as a one-test family (no correction)."""
    from modtransfer.reports.analysis import Gate

    cond = Condition("lm", "tiny", "{}", "val_loss", False, "lm")
    c = Comparison("v", cond, seeds=list(range(len(diffs))), diffs=diffs, paired_baseline=[base] * len(diffs),
                   baseline_values=[base + 0.01 * i for i in range(len(diffs))], n_failed=failed, margin=margin,
                   gate=Gate(gate, ""))
    c.n_used = len(diffs)
    if len(diffs) >= 2:
        c.ci = stats.t_interval(diffs)
        p, peq, _ = stats.sequential_p(np.asarray(diffs), None, margin)
        c.p_value, c.p_equiv = float(p), float(peq)
        c.p_adjusted, c.p_equiv_adjusted = c.p_value, c.p_equiv
    return c


def test_calls_on_constructed_comparisons() -> None:
    s = Settings(n_boot=2000)
    wob = [0.1, 0.12, 0.09, 0.11, 0.1, 0.095, 0.105, 0.1]
    assert call(_comp(wob), s) == "better"
    assert call(_comp([-x for x in wob]), s) == "worse"
    assert call(_comp([0.001, -0.001] * 4), s) == "no change"          # inside +-0.02, tightly
    assert call(_comp([0.001, -0.001] * 4, margin=math.nan), s) == "unclear"  # no margin: never "no change"
    assert call(_comp([0.5, -0.4] * 4), s) == "unclear"
    assert call(_comp(wob, failed=1), s) == "unstable"
    assert call(_comp([]), s) == "missing"
    assert call(_comp([0.1]), s) == "too few seeds"                    # no call below 3 paired seeds
    assert call(_comp([0.1, 0.11]), s) == "too few seeds"
    assert call(_comp(wob, gate="not learned"), s) == "not learned"
    c = _comp(wob)
    c.p_adjusted = 0.2                                                 # consistent, but not after correction
    assert call(c, s) == "unclear"


@pytest.mark.parametrize(("calls", "expected"), [
    (["better", "better"], "transfers"),
    (["better", "no change"], "task-specific"),
    (["better", "unclear"], "task-specific"),
    (["better"], "task-specific"),
    (["no change", "no change"], "neutral"),
    (["better", "worse"], "mixed"),
    (["worse", "no change"], "hurts"),
    (["better", "unstable"], "unstable"),
    (["unclear", "no change"], "inconclusive"),
    (["missing", "missing"], "inconclusive"),
    (["better", "better", "missing"], "transfers"),
    (["better", "better", "not learned"], "transfers"),     # a task the baseline did not learn is left out
    (["worse", "not learned"], "hurts"),
    (["too few seeds", "too few seeds"], "inconclusive"),
    (["not learned", "not learned"], "inconclusive"),
])
def test_verdict_rules(calls: list[str], expected: str) -> None:
    assert verdict(calls)[0] == expected


def test_settings_of_a_task_combine_into_one_call() -> None:
    assert combine(["better", "better"]) == "better"
    assert combine(["better", "no change"]) == "varies"
    assert combine(["better", "unstable"]) == "unstable"
    assert combine(["missing", "worse"]) == "worse"
    assert verdict(["better", combine(["better", "unclear"])])[0] == "task-specific"


def test_every_verdict_reachable_end_to_end(tmp_path: Path) -> None:
    effects = {("xfer", "lm"): 4.0, ("xfer", "mt"): 4.0, ("spec", "lm"): 4.0, ("spec", "mt"): 0.0,
               ("flat", "lm"): 0.0, ("flat", "mt"): 0.0, ("mix", "lm"): 4.0, ("mix", "mt"): -4.0,
               ("bad", "lm"): -4.0, ("bad", "mt"): 0.0, ("wobbly", "lm"): 4.0, ("wobbly", "mt"): 4.0,
               ("noisy", "lm"): 0.5, ("noisy", "mt"): -0.5}
    write_store(tmp_path, effects, seeds=10, noise=0.05, failed={("wobbly", "mt"): 2})
    # "noisy" gets its own large per-seed noise: rewrite its cells
    store = Store(tmp_path / "results.sqlite")
    with store.connect() as con:
        rng = np.random.default_rng(5)
        for r in con.execute("SELECT cell_id, primary_value, task FROM cells WHERE variant='noisy'").fetchall():
            con.execute("UPDATE cells SET primary_value=? WHERE cell_id=?",
                        (r[1] + rng.normal(0, 30 * TASKS[r[2]][3]), r[0]))
    a = analyse(store.rows(), store.meta(), Settings(n_boot=2000))
    got = {v: a.verdicts[v][0] for v in a.verdicts}
    assert got == {"xfer": "transfers", "spec": "task-specific", "flat": "neutral", "mix": "mixed", "bad": "hurts",
                   "wobbly": "unstable", "noisy": "inconclusive"}
    assert set(got.values()) == set(VERDICTS)
    heads = {v: a.headlines[v].kind for v in a.headlines}
    assert heads == {"xfer": "better everywhere", "spec": "mixed", "flat": "no change everywhere", "mix": "mixed",
                     "bad": "mixed", "wobbly": "unstable", "noisy": "unclear"}
    assert set(a.order[:2]) == {"xfer", "wobbly"} and a.order.index("bad") > a.order.index("flat")


def test_single_seed_gives_no_call_and_says_too_few_seeds(tmp_path: Path) -> None:
    write_store(tmp_path, {("v", "lm"): 10.0, ("v", "mt"): 10.0}, seeds=1)
    c = comps_of(tmp_path)[("v", "lm")]
    assert c.n == 1 and c.ci is None and c.p_adjusted is None
    assert c.call == "too few seeds"
    store = Store(tmp_path / "results.sqlite")
    a = analyse(store.rows(), store.meta(), Settings(n_boot=500))
    assert a.verdicts["v"][0] == "inconclusive" and a.too_few_seeds()
    assert math.isfinite(a.overall["v"])  # the declared noise gives the effect a unit even with one seed


def test_hparams_compared_at_the_same_setting_and_sensitivity(tmp_path: Path) -> None:
    write_store(tmp_path, {("v", "lm"): 3.0, ("v", "mt"): 3.0, ("w", "lm"): -2.0, ("w", "mt"): -2.0},
                hparams=[{"lr": 0.001}, {"lr": 0.01}], noise=0.1)
    store = Store(tmp_path / "results.sqlite")
    with store.connect() as con:  # the baseline is much worse at lr=0.01: pairing across settings would show it
        con.execute("UPDATE cells SET primary_value = primary_value + 5 WHERE variant='baseline' AND task='lm' "
                    "AND hparams LIKE '%0.01%'")
    comps = compare(store.rows(), Settings(n_boot=500))
    lm = {c.cond.label: c for c in comps if c.cond.task == "lm" and c.variant == "v"}
    assert set(lm) == {"lm [lr=0.001]", "lm [lr=0.01]"}
    assert lm["lm [lr=0.001]"].mean_diff == pytest.approx(3 * 0.02, rel=0.2)
    assert lm["lm [lr=0.01]"].mean_diff == pytest.approx(5 + 3 * 0.02, rel=0.05)
    a = analyse(store.rows(), store.meta(), Settings(n_boot=500))
    sens = {(r["variant"], r["task"]): r for r in a.sensitivity}
    assert sens[("v", "lm")]["settings"] == 2 and sens[("v", "lm")]["share"] == 1.0
    assert a.groups == ["lm", "mt"] and set(a.task_calls["v"]) == {"lm", "mt"}
    assert sum(p["across"] for p in a.agreement.pairs) == 4 and len(a.agreement.pairs) == 6


def test_reference_comparison_maps_names_and_flags_disagreement(tmp_path: Path) -> None:
    table = load_table()
    assert all(name in table for name in PAPER_NAMES.values())
    write_store(tmp_path, {("swiglu", "lm"): 4.0, ("swiglu", "mt"): 4.0, ("elu", "lm"): 4.0, ("elu", "mt"): -4.0})
    rows = {(r.variant, r.task): r for r in compare_reference(list(comps_of(tmp_path).values()))}
    sw = rows[("swiglu", "lm")]
    # both sides are improvements (+ = better): the paper's loss fell 2.182 -> 2.127, ours fell too
    assert sw.paper_model == "SwiGLU" and sw.paper_delta == pytest.approx(2.182 - 2.127)
    assert sw.paper_better and sw.ours_delta > 0 and sw.signs_agree and sw.agreement == "agree"
    elu = rows[("elu", "lm")]
    assert not elu.paper_better and elu.signs_agree is False and elu.agreement == "disagree"
    assert rows[("elu", "mt")].paper_delta == pytest.approx(26.08 - 26.62) and rows[("elu", "mt")].signs_agree


# -- the report ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run with a report built in offline W&B mode, with a W&B Report definition."""
    run = tmp_path_factory.mktemp("run")
    effects = {("swiglu", "lm"): 4.0, ("swiglu", "mt"): 3.0, ("elu", "lm"): -3.0, ("elu", "mt"): 0.0,
               ("rmsnorm", "lm"): 0.5, ("rmsnorm", "mt"): 0.2, ("fixup", "lm"): 1.0, ("fixup", "mt"): 1.0}
    write_store(run, effects, seeds=6, noise=0.3, failed={("fixup", "mt"): 1},
                skipped=[{"variant": "fixup", "task": "regression", "reason": "fixup needs residual blocks"}],
                benchmark="synth-bench")
    build_report(run, wandb_mode="offline", wandb_report=True, settings=Settings(n_boot=1000))
    return run


def test_report_files_and_self_contained_html(report_run: Path) -> None:
    out = report_run / "report"
    for name in ("index.html", "report.md", "transfer.csv", "heatmap.png", "agreement.png", "forest_lm.png",
                 "curves_mt.png", "wandb_report.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    page = (out / "index.html").read_text(encoding="utf-8")
    text = html.unescape(page)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<link\b|@import|url\(", page, re.I)
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == len(list(out.glob("*.png")))
    for needle in ("headline-table", "design-table", "verdict-table", "Rule per variant", "fixup needs residual blocks", "DivergenceError", "abc1234",
                 "Narang", "Kendall", "Params ×", '"seeds": 6'):
        assert needle in text, needle
    with open(out / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["variant"] for r in rows} == {"swiglu", "elu", "rmsnorm", "fixup"}
    sw = next(r for r in rows if r["variant"] == "swiglu" and r["task"] == "lm")
    assert float(sw["diff"]) > 0 and sw["call"] == "better" and sw["verdict"] == "transfers"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "![" in md and "(heatmap.png)" in md and "| swiglu |" in md
    assert not list(report_run.glob(".report-*"))  # no temporary folder left behind


def test_wandb_offline_run_and_report_definition(report_run: Path) -> None:
    runs = list((report_run / "wandb").rglob("offline-run-*"))
    assert len(runs) == 1 and report_run in runs[0].parents
    assert runs[0].name.endswith("-" + report_run_id_of(report_run)), "the report run's id is fixed by its folders"
    assert list(runs[0].glob("*.wandb"))
    media = runs[0] / "files" / "media"
    table = json.loads(next((media / "table").glob("transfer_matrix_*.table.json")).read_text())
    assert table["columns"][:2] == ["variant", "name"] and len(table["data"]) == 8
    assert list((media / "images" / "plots").glob("heatmap_*.png"))
    assert list((media / "images" / "plots").glob("forest_lm_*.png"))
    defn = json.loads((report_run / "report" / "wandb_report.json").read_text())
    assert defn["type"] == "Report" and defn["title"] == "Transfer report: synth-bench"
    kinds = [b["type"] for b in defn["blocks"]]
    assert kinds[0] == "H1" and "MarkdownBlock" in kinds
    assert "| swiglu | transfers |" in defn["blocks"][1]["text"]
    grids = [b for b in defn["blocks"] if b["type"] == "PanelGrid"]
    top = grids[0]["panels"]
    assert [p["type"] for p in top] == ["WeavePanelSummaryTable", "WeavePanelSummaryTable", "MediaBrowser", "MediaBrowser"]
    assert top[0]["table_name"] == "transfer_matrix" and top[3]["media_keys"] == ["plots/forest_lm", "plots/forest_mt"]
    # a store without a run folder id (written before ids existed) keeps the benchmark name as its group
    assert grids[0]["runsets"][0]["filters"] == "JobType = 'report' and Group = 'synth-bench'"
    per_task = grids[1:]
    assert [g["runsets"][0]["name"] for g in per_task] == ["lm", "mt"]
    for g in per_task:
        assert g["runsets"][0]["groupby"] == ["config.variant"]
        assert all(p["groupby"] == "config.variant" and p["groupby_rangefunc"] == "stderr" for p in g["panels"])
        assert all(p["x"] == "trainer/global_step" for p in g["panels"] if p["type"] == "LinePlot")
        assert g["custom_run_colors"][0]["group"]["keys"][0]["value"] == "baseline"
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from modtransfer.reports.wandb_push import to_api

    report = to_api({**defn, "entity": "someone"})  # builds API objects; nothing is sent
    api_grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert isinstance(report, wr.Report) and len(api_grids) == 3
    assert all(isinstance(k, wr.RunsetGroup) for k in api_grids[1].custom_run_colors)


def report_run_id_of(run: Path) -> str:
    from modtransfer.reports.summary import analyse_run
    from modtransfer.reports.wandb_push import report_run_id

    return report_run_id(analyse_run(run, Settings(n_boot=200)), run / "report")


def test_failed_report_leaves_previous_report_intact(report_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modtransfer.reports import render_md

    before = (report_run / "report" / "index.html").read_bytes()
    monkeypatch.setattr(render_md, "render", lambda doc: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        build_report(report_run, wandb_mode="disabled", settings=Settings(n_boot=200))
    assert (report_run / "report" / "index.html").read_bytes() == before
    assert not list(report_run.glob(".report-*"))


def test_report_of_degenerate_stores(tmp_path: Path) -> None:
    only_base, no_base = tmp_path / "only_base", tmp_path / "no_base"
    for run, variant in ((only_base, "baseline"), (no_base, "gelu")):
        store = Store(run / "results.sqlite")
        for seed in range(2):
            store.record(make_row(variant, "lm", seed, 2.0 + 0.01 * seed))
        page = build_report(run, wandb_mode="disabled", settings=Settings(n_boot=200)).read_text(encoding="utf-8")
        assert "main-table" in page
    only_md = (only_base / "report" / "report.md").read_text(encoding="utf-8")
    assert "**Verdicts**: no variant besides the baseline." in only_md and "Baseline-only study" in only_md
    md = (no_base / "report" / "report.md").read_text(encoding="utf-8")
    assert "| gelu | inconclusive | no task with paired seeds |" in md and "No usable `baseline` cell for: lm" in md


def test_missing_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no results store"):
        build_report(tmp_path, wandb_mode="disabled")
    assert not (tmp_path / "report").exists()


def test_import_is_lazy() -> None:
    code = ("import sys, modtransfer.reports; "
            "bad = [m for m in ('matplotlib', 'wandb', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
