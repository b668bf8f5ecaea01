"""A report you can cite: one sign convention, intervals that match the calls, registered slots and names,
exports that stand alone (per-task costs, glossary, per-seed values), task cards, no machine path.

The fixture is one small real plan (regression and lm, a planted better variant on each, 3 paired seeds)
whose cells are recorded as the harness records them; the report is built once per module.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from modtransfer.reports import build_report
from modtransfer.reports.analysis import Settings
from modtransfer.reports.intervals import ADJUSTED, UNADJUSTED, adjusted_level, excludes_zero_uncalled, interval
from modtransfer.reports.names import display_name, registered_slot
from modtransfer.reports.summary import analyse_run
from modtransfer.run.store import Store

from .test_reports import make_row

BASE = {"activation": "relu", "ffn": "dense", "norm": "layernorm", "residual": "pre"}
#: variant -> (spec change, per task: improvement in baseline SDs, positive = better)
PLANTED = {"swiglu": ({"ffn": "glu", "activation": "swish"}, {"lm": 6.0, "mt": 6.0}),
           "fixup": ({"residual": "fixup", "norm": "none"}, {"lm": 0.0, "mt": 0.0}),
           "gelu": ({"activation": "gelu"}, {"lm": -6.0, "mt": -6.0})}
TASKS = {"lm": (1.95, 0.02, False, {"tokenizer": "char"}, 100_000), "mt": (7.0, 0.5, True, {"max_len": 48, "decide_on": "val_bleu"}, 360_000)}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import numpy as np

    run = tmp_path_factory.mktemp("citable")
    store = Store(run / "results.sqlite")
    rng = np.random.default_rng(3)
    for task, (mean, sd, hib, cfg, params) in TASKS.items():
        base = mean + rng.normal(0, sd, 4)
        sign = 1.0 if hib else -1.0
        for v, (change, effect) in {"baseline": ({}, {"lm": 0, "mt": 0}), **PLANTED}.items():
            for s in range(4):
                value = base[s] + sign * effect[task] * sd + (rng.normal(0, 0.1 * sd) if v != "baseline" else 0)
                row = make_row(v, task, s, float(value), benchmark="citable")
                row.update(spec={**BASE, **change}, task_config=cfg, params=params + (s if v == "fixup" else 0),
                           primary_metric="val_bleu" if task == "mt" else "val_loss", higher_is_better=int(hib))
                store.record(row)
    store.set_meta("plan", {"name": "citable", "source": str(run / "plan.yaml")})
    build_report(run, wandb_mode="disabled", settings=Settings(n_boot=200))
    return {"run": run, "out": run / "report", "a": analyse_run(run, Settings(n_boot=200))}


def _transfer(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "transfer.csv", encoding="utf-8") as f:
        return {(r["variant"], r["task"]): r for r in csv.DictReader(f)}


def test_a_better_variant_is_positive_on_a_loss_task_and_on_a_bleu_task(report: dict[str, Any]) -> None:
    rows = _transfer(report["out"])
    for task in ("lm", "mt"):  # lm: loss fell; mt: BLEU rose; both "better", both positive
        r = rows[("swiglu", task)]
        assert r["call"] == "better" and float(r["diff"]) > 0 and float(r["interval_low"]) > 0
        assert rows[("gelu", task)]["call"] == "worse" and float(rows[("gelu", task)]["diff"]) < 0
    swiglu_lm = report["a"].comp("swiglu", "lm")
    assert swiglu_lm.variant_mean < swiglu_lm.baseline_mean, "the loss fell, and diff says better"
    res = json.loads((report["out"] / "results.json").read_text(encoding="utf-8"))
    seeds = next(c for c in res["comparisons"] if (c["variant"], c["task"]) == ("swiglu", "lm"))["per_seed"]
    assert len(seeds) == 4 and all(s["improvement"] == pytest.approx(s["baseline"] - s["variant"]) for s in seeds)


def test_forest_axis_says_the_direction_in_words(report: dict[str, Any]) -> None:
    from modtransfer.reports import plots

    row = plots.ForestRow("SwiGLU", 0.1, (0.05, 0.15), [0.1, 0.12], "better")
    fig = plots.forest("lm", "Δ val_loss, nats per character", [row], 0.02, 0.95, "lower val_loss")
    label = fig.axes[0].get_xlabel()
    assert "improvement" in label and "lower val_loss →" in label and "variant − baseline" not in label
    colours = {tuple(round(c, 3) for c in line.get_color()) if not isinstance(line.get_color(), str)
               else line.get_color() for line in fig.axes[0].lines}
    assert plots.BETTER in colours, "a better call is drawn blue, as the title says"


def test_called_intervals_are_fcr_adjusted_and_uncalled_ones_marked(report: dict[str, Any]) -> None:
    a = report["a"]
    called = [c for c in a.comps if c.call in ("better", "worse")]
    level = adjusted_level(a.comps, a.settings)
    assert called and level == pytest.approx(1 - len(called) * a.settings.alpha / len(a.comps))
    for c in a.comps:
        lo, hi, kind = interval(c, a.comps, a.settings)
        if c in called:
            assert kind == ADJUSTED and lo <= c.ci[0] and hi >= c.ci[1], "wider than the unadjusted interval"
        else:
            assert kind == UNADJUSTED and (lo, hi) == c.ci
    c = a.comp("fixup", "lm")
    c.ci, c.call = (0.01, 0.02), "unclear"
    assert excludes_zero_uncalled(c)
    page = (report["out"] / "index.html").read_text(encoding="utf-8")
    assert "Benjamini &amp; Yekutieli 2005" in page or "Benjamini & Yekutieli 2005" in page


def test_groups_are_registered_slots_and_names_come_from_the_registry() -> None:
    card = {"gelu": "activation", "swish": "activation", "glu": "ffn", "geglu": "ffn", "reglu": "ffn",
            "swiglu": "ffn", "liglu": "ffn", "rmsnorm": "norm", "rezero": "residual", "fixup": "residual",
            "factorized_embedding": "embedding", "block_sharing": "sharing", "adaptive_softmax": "output",
            "mixture_of_softmaxes": "output"}
    assert {v: registered_slot(v) for v in card} == card
    assert [display_name(v) for v in ("swiglu", "reglu", "rmsnorm", "fixup", "gelu", "block_sharing")] == \
        ["SwiGLU", "ReGLU", "RMSNorm", "Fixup", "GeLU", "Block sharing"]
    assert display_name("swiglu+rmsnorm") == "SwiGLU + RMSNorm" and registered_slot("swiglu+rmsnorm") == "ffn + norm"


def test_main_table_csv_has_each_tasks_own_costs(report: dict[str, Any]) -> None:
    with open(report["out"] / "main_table.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    base = {r["condition"]: float(r["params"]) for r in rows if r["variant"] == "baseline"}
    assert base == {"lm": 100_000, "mt": 360_000}
    assert {r["slot"] for r in rows if r["variant"] == "fixup"} == {"residual"}


def test_results_json_stands_alone(report: dict[str, Any]) -> None:
    res = json.loads((report["out"] / "results.json").read_text(encoding="utf-8"))
    g = res["glossary"]
    for key in ("sign_convention", "metric", "unit", "higher_is_better", "diff", "interval", "win_rate",
                "per_seed", "call better", "call unclear", "mark †"):
        assert key in g, key
    assert "positive = better" in res["sign_convention"] and "Yekutieli" in res["intervals"]
    c = next(c for c in res["comparisons"] if c["task"] == "lm")
    assert "win_rate" in c and "p_improve" not in c and c["higher_is_better"] is False
    assert c["unit"] == "nats per character"
    assert res["task_cards"]["mt"]["metrics"]["val_bleu"]["key"] == "mt/bleu"
    with open(report["out"] / "transfer.csv", encoding="utf-8") as f:
        assert {r["higher_is_better"] for r in csv.DictReader(f)} == {"true", "false"}


def test_tasks_section_describes_each_task(report: dict[str, Any]) -> None:
    md = (report["out"] / "report.md").read_text(encoding="utf-8")
    tasks = md.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    assert "Shakespeare" in tasks and "nats per character" in tasks and "BLEU (0-100)" in tasks
    assert "Narang et al. 2021" in tasks and "48 tokens" in tasks


def test_no_absolute_path_of_the_building_machine_in_any_file(report: dict[str, Any]) -> None:
    run = str(report["run"].resolve())
    for f in report["out"].iterdir():
        if f.suffix in (".png",):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        assert run not in text and str(Path.home()) not in text, f.name


def _md_table(md: str, header: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table whose header row holds ``header``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| ") and f"| {header} |" in line)
    heads = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(heads, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return rows


def test_reference_table_writes_both_sides_as_improvement(report: dict[str, Any]) -> None:
    md = (report["out"] / "report.md").read_text(encoding="utf-8")
    rows = {(r["Variant"], r["Our task"]): r for r in _md_table(md, "Paper Δ improvement (+ = better)")}
    effects = {(r["Variant"], r["Task · metric"].split(" · ")[0]): r for r in _md_table(md, "Δ improvement (+ = better)")}
    # paper: SwiGLU's C4 loss 2.182 -> 2.127 (fell: +0.055) and BLEU 26.62 -> 27.02 (rose: +0.4); GeLU's BLEU fell
    paper = {k: float(rows[k]["Paper Δ improvement (+ = better)"].split(" ")[0]) for k in rows}
    assert paper[("swiglu", "lm")] == pytest.approx(0.055) and paper[("swiglu", "mt")] == pytest.approx(0.4)
    assert paper[("gelu", "mt")] == pytest.approx(-0.15)
    assert "lower is better" in rows[("swiglu", "lm")]["Paper Δ improvement (+ = better)"]
    assert "higher is better" in rows[("swiglu", "mt")]["Paper Δ improvement (+ = better)"]
    for k, r in rows.items():  # ours: the Effects table's Δ and interval, planted better on both tasks for swiglu
        ours = r["Our Δ improvement (+ = better)"]
        assert float(ours.split(" ")[0]) == pytest.approx(float(effects[k]["Δ improvement (+ = better)"]), abs=1e-3)
        assert r["Our interval of Δ"] == effects[k]["Interval of Δ"]
    assert float(rows[("swiglu", "lm")]["Our Δ improvement (+ = better)"].split(" ")[0]) > 0
    assert rows[("swiglu", "lm")]["Signs agree"] == "yes" and rows[("gelu", "lm")]["Signs agree"] == "**no**"
    assert "Δ is in each metric's own direction" not in md.split("## Reference study", 1)[1].split("\n## ", 1)[0]


def _page_text(page: str) -> str:
    """The text a reader sees: no script, style, pre-formatted plan or code span, no tags."""
    import re

    for tag in ("script", "style", "pre", "code"):
        page = re.sub(rf"<{tag}\b.*?</{tag}>", " ", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_no_unrendered_emphasis_in_the_html(report: dict[str, Any]) -> None:
    import re

    page = (report["out"] / "index.html").read_text(encoding="utf-8")
    assert "<em>better everywhere</em>" in page, "the verdict rule's emphasis is rendered"
    left = re.findall(r"(?<![\w*])\*[^\s*][^*<>]*?(?<=\S)\*(?![\w*])", _page_text(page))
    assert not left, left


def test_inline_renders_emphasis_but_leaves_code_and_arithmetic() -> None:
    from modtransfer.reports.render_html import inline

    assert inline("they say *which mechanism*, **not** `*glu*`") == \
        "they say <em>which mechanism</em>, <strong>not</strong> <code>*glu*</code>"
    assert inline("2 * se and a*b; * = better") == "2 * se and a*b; * = better"


def test_agreement_interval_only_with_enough_distinct_resamples(report: dict[str, Any], tmp_path: Path) -> None:
    from modtransfer.reports.agreement import agreement, distinct_resamples, fewest_seeds_for_interval

    from .test_reports import comps_of, write_store

    assert [distinct_resamples(n) for n in (1, 2, 3, 4, 5)] == [1, 3, 10, 35, 126]
    assert fewest_seeds_for_interval() == 5
    effects = {(v, t): e for v, e in [("a", 3.0), ("b", 1.0), ("c", -1.0)] for t in ("lm", "mt")}
    for seeds, shown in ((3, False), (5, True)):
        write_store(tmp_path / str(seeds), effects, seeds=seeds, noise=0.1)
        g = agreement(list(comps_of(tmp_path / str(seeds)).values()), Settings(n_boot=200), n_boot=200)
        assert (g.pairs[0]["ci"] is not None) is shown and (g.mean_ci is not None) is shown
        assert ("10 distinct resamples" in g.seeds_note) is not shown
    md = (report["out"] / "report.md").read_text(encoding="utf-8")   # 4 seeds: 35 distinct resamples
    section = md.split("## Agreement between tasks", 1)[1].split("\n## ", 1)[0]
    row = next(r for r in _md_table(md, "Kendall tau") if r["Task A"] == "lm")
    assert row["95% bootstrap interval"] == "omitted (35 distinct resamples)"
    assert "4 seeds give only 35 distinct resamples" in section and "at least 100" in section
    assert "bootstrap 95% interval" not in section


def test_what_happened_without_diagnostics_is_only_listed_under_not_shown(report: dict[str, Any]) -> None:
    md = (report["out"] / "report.md").read_text(encoding="utf-8")
    page = (report["out"] / "index.html").read_text(encoding="utf-8")
    assert "## What happened" not in md and 'id="what-happened"' not in page and "(#what-happened)" not in md
    not_shown = md.split("## Not shown", 1)[1]
    line = next(x for x in not_shown.splitlines() if x.startswith("- **What happened**"))
    assert "lost to the baseline cell of the same seed" in line and "no event and no diagnostics" in line
    assert "without figures" not in md and "no event recorded" not in md


def test_what_happened_shows_only_cells_with_diagnostics_and_an_event(tmp_path: Path) -> None:
    from modtransfer.reports.happened import happened_section

    from .test_reports import make_row

    store = Store(tmp_path / "results.sqlite")
    diag = [{"step": s, "name": "grad_norm", "layer": "", "value": 1.0 + s} for s in (0, 10, 20)]
    spike = [{"kind": "grad_spike", "step": 10, "layer": "encoder.0", "detail": "gradient norm x40"}]
    for s in range(3):
        store.record({**make_row("baseline", "lm", s, 2.0), "diagnostics": diag, "events": []})
        side = [(diag, spike), ([], []), ([], spike)][s]   # seed 0: both; 1: neither; 2: an event only
        store.record({**make_row("gelu", "lm", s, 2.5), "diagnostics": side[0], "events": side[1]})
    s = happened_section(analyse_run(tmp_path, Settings(n_boot=50)), tmp_path, tmp_path)
    assert s is not None and s.shown
    (flag,) = next(b for b in s.blocks if getattr(b, "id", "") == "flagged-cells").rows
    assert "seed 0" in flag[0] and "grad_spike at step 10" in flag[2]
    images = [b.file for b in s.blocks if hasattr(b, "file")]
    assert images == [f"happened_{_slug_of(store, 0)}"] and (tmp_path / images[0]).is_file()
    assert len(s.omitted) == 2 and "seed 1" in s.omitted[0] and "seed 2" in s.omitted[1]
    assert "no event was recorded" in s.omitted[0] and "no diagnostics recorded" in s.omitted[1]


def _slug_of(store: Store, seed: int) -> str:
    import re

    cell = next(r["cell_id"] for r in store.rows() if r["variant"] == "gelu" and r["seed"] == seed)
    return re.sub(r"[^A-Za-z0-9]+", "_", cell).strip("_").lower() + ".png"
