"""The report's main table (Narang et al. 2021 layout), its exports and where a report may be written."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.reports import build_report
from modtransfer.reports.analysis import Settings
from modtransfer.reports.summary import analyse_run
from modtransfer.reports.table import latex, main_table
from modtransfer.run.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_reports import TASK_INFO, make_row  # noqa: E402  (the synthetic rows of the report tests)

BASE_SPEC = {"d_model": 64, "n_layers": 2, "activation": "relu", "ffn": "dense", "norm": "layernorm"}
#: variant -> (spec changes, effect in task SDs per task; > 0 = better)
VARIANTS = {"gelu": ({"activation": "gelu"}, {"lm": 0.0, "mt": 0.0}),
            "swiglu": ({"activation": "swish", "ffn": "glu", "d_ff": 340}, {"lm": 5.0, "mt": 4.0}),
            "rmsnorm": ({"norm": "rmsnorm"}, {"lm": -5.0, "mt": 0.1})}
SDS = {"lm": (2.0, 0.02, False), "mt": (20.0, 0.3, True)}


def _record(store: Store, variant: str, task: str, seed: int, value: float, spec: dict[str, Any],
            hparams: dict[str, Any] | None = None) -> None:
    row = make_row(variant, task, seed, value, benchmark="exports", hparams=hparams)
    row["spec"] = spec
    store.record(row)


def slot_store(run: Path, seeds: int = 6) -> Store:
    store = Store(run / "results.sqlite")
    rng = np.random.default_rng(7)
    for task, (mean, sd, hib) in SDS.items():
        base = mean + rng.normal(0, sd, seeds)
        for s in range(seeds):
            _record(store, "baseline", task, s, float(base[s]), BASE_SPEC)
        sign = 1.0 if hib else -1.0
        for v, (change, effect) in VARIANTS.items():
            for s in range(seeds):
                value = base[s] + sign * effect[task] * sd + rng.normal(0, 0.2 * sd)
                _record(store, v, task, s, float(value), {**BASE_SPEC, **change})
    store.set_meta("plan", {"name": "exports", "variants": list(VARIANTS), "tasks": list(SDS), "seeds": seeds})
    store.set_meta("plans", [{"name": "exports", "seeds": seeds, "size": "tiny"}])
    store.set_meta("tasks", TASK_INFO)
    return store


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("exports")
    slot_store(run)
    build_report(run, wandb_mode="disabled", settings=Settings(n_boot=200))
    return run


def test_main_table_baseline_first_grouped_by_slot_with_calls(run: Path) -> None:
    t = main_table(analyse_run(run, Settings(n_boot=200)))
    assert [ln.variant for ln in t.lines][0] == "baseline"
    slots = {ln.variant: ln.slot for ln in t.lines}
    # the slot each variant registered (SwiGLU is a gated FFN, whatever spec field differs first)
    assert slots == {"baseline": "baseline", "gelu": "activation", "swiglu": "ffn", "rmsnorm": "norm"}
    assert {ln.variant: ln.name for ln in t.lines} == {"baseline": "Baseline", "gelu": "GeLU", "swiglu": "SwiGLU",
                                                       "rmsnorm": "RMSNorm"}
    order = [ln.slot for ln in t.lines]
    assert order.index("norm") > max(i for i, s in enumerate(order) if s == "activation")  # grouped, slot order
    calls = {ln.variant: {lab: e.call for lab, e in ln.entries.items()} for ln in t.lines}
    assert calls["swiglu"] == {"lm": "better", "mt": "better"} and calls["rmsnorm"]["lm"] == "worse"
    base = next(ln for ln in t.lines if ln.variant == "baseline")
    assert base.entries["lm"].call == "" and len(base.entries["lm"].values) == 6
    assert base.params == 100_000 and base.steps_per_s == pytest.approx(10.0)
    md = (run / "report" / "main_table.md").read_text(encoding="utf-8")
    swiglu = next(line for line in md.splitlines() if line.startswith("| SwiGLU"))
    assert swiglu.count("**") == 4 and "▲" in swiglu and " ± " in swiglu  # bold where better, mean ± SD
    rms = next(line for line in md.splitlines() if line.startswith("| RMSNorm"))
    assert "▼" in rms and "**" not in rms


def test_latex_table_is_booktabs_and_well_formed(run: Path) -> None:
    tex = (run / "report" / "main_table.tex").read_text(encoding="utf-8")
    assert tex == latex(main_table(analyse_run(run, Settings(n_boot=200))), "exports")
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{llrrrcc}"):
        assert cmd in tex
    assert tex.count("{") == tex.count("}")
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    lines = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(lines) == 4 and all(ln.count(" & ") == 6 for ln in lines)
    assert tex.count(r"\textbf{") == 2  # swiglu better on both tasks, nothing else
    assert body.count(r"\midrule") == 3  # one rule between baseline / activation / ffn / norm
    assert "SwiGLU" in body and "swiglu" not in body, "display names, not ids"
    assert r"\resizebox{\textwidth}" in tex, "fits a page"
    caption = tex.split(r"\caption{", 1)[1]
    for mark in (r"$\blacktriangle$", r"$\blacktriangledown$", "?", "--", r"$\circ$", r"$\times$"):
        assert mark in caption, f"the caption defines {mark}"
    for col in (5, 6):  # one number of decimals per column
        decimals = {len(ln.split(" & ")[col].split(" ")[0].split(".")[1]) for ln in lines}
        assert len(decimals) == 1, decimals


def test_csv_exports_and_results_json(run: Path) -> None:
    out = run / "report"
    store_rows = Store(run / "results.sqlite", readonly=True).rows()
    with open(out / "cells.csv", encoding="utf-8") as f:
        cells = list(csv.DictReader(f))
    assert len(cells) == len(store_rows) == 48
    first = next(c for c in cells if c["variant"] == "swiglu" and c["task"] == "mt" and c["seed"] == "3")
    truth = next(r for r in store_rows if (r["variant"], r["task"], r["seed"]) == ("swiglu", "mt", 3))
    assert float(first["primary_value"]) == pytest.approx(truth["primary_value"])
    assert first["condition"] == "mt" and float(first["metric:val_bleu"]) == pytest.approx(truth["primary_value"])
    with open(out / "main_table.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {r["call"] for r in table if r["variant"] == "swiglu"} == {"better"}
    assert {r["model"] for r in table if r["variant"] == "swiglu"} == {"SwiGLU"}
    assert {r["higher_is_better"] for r in table} == {"true", "false"}
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    # the run folder relative to the report folder (no machine's absolute path), and it leads there
    assert not Path(res["run_dir"]).is_absolute() and res["benchmark"] == "exports"
    assert (out / res["run_dir"]).resolve() == run.resolve()
    with open(out / "transfer.csv", encoding="utf-8") as f:
        assert len(res["comparisons"]) == len(list(csv.DictReader(f))) == 6
    assert res["verdicts"]["swiglu"]["verdict"] == "transfers" and res["verdicts"]["rmsnorm"]["verdict"] == "hurts"
    assert res["plans"] == [{"name": "exports", "seeds": 6, "size": "tiny"}]
    assert res["provenance"]["recorded_with_cells"]["host"] == "test" and "python" in res["provenance"]["report_machine"]
    readme = (out / "README.md").read_text(encoding="utf-8")
    for name in ("cells.csv", "results.json", "main_table.md / main_table.tex / main_table.csv", "index.html"):
        assert f"`{name}`" in readme
    assert "wandb_report.json" not in readme  # only files that are there


def test_page_opens_with_headline_banner_and_main_table(run: Path) -> None:
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([^"]+)"', page)
    assert sections[0] == "main-table"
    assert page.index('id="headline"') < page.index('id="caveats"') < page.index('<section id="main-table"')
    headline = re.search(r'id="headline">(.*?)</p>', page).group(1)
    assert "Of 3 variant(s)" in headline and "1 transfer(s)" in headline and "1 hurt(s)" in headline
    assert "Budget" in re.search(r'id="caveats">(.*?)</div>', page).group(1)


def test_out_never_overwrites_something_that_is_not_a_report(run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match="not a modtransfer report"):
        build_report(run, wandb_mode="disabled", out_dir=mine)
    assert (mine / "thesis.tex").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    with pytest.raises(UserError, match="run folder"):
        build_report(run, wandb_mode="disabled", out_dir=run)
    assert cli.main(["report", str(run), "--out", str(mine), "--wandb", "disabled"]) == 2
    assert "not a modtransfer report" in capsys.readouterr().err
    other = tmp_path / "other"
    assert cli.main(["report", str(run), "--out", str(other), "--wandb", "disabled"]) == 0
    assert "replacing" not in capsys.readouterr().err
    assert cli.main(["report", str(run), "--out", str(other), "--wandb", "disabled"]) == 0
    assert f"replacing the earlier report in {other}" in capsys.readouterr().err
    assert (run / "report" / "index.html").is_file()  # the run's own report untouched


def test_baseline_only_sweep_gets_a_table_per_setting(tmp_path: Path) -> None:
    store = Store(tmp_path / "results.sqlite")
    lrs = {1.0e-3: 2.30, 3.0e-3: 2.05, 1.0e-2: 2.20}
    for lr, mean in lrs.items():
        for s in range(3):
            _record(store, "baseline", "lm", s, mean + 0.01 * s, BASE_SPEC, {"lr": lr})
    store.set_meta("tasks", TASK_INFO)
    md = build_report(tmp_path, wandb_mode="disabled", settings=Settings(n_boot=200)).with_name("report.md")
    text = md.read_text(encoding="utf-8")
    assert "0 variant(s)" not in text and "Baseline-only study" in text and "3 hyper-parameter setting(s)" in text
    sweep = text.split("## Baseline per hyper-parameter setting", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in sweep.splitlines() if ln.startswith("| lm")]
    assert len(rows) == 3
    best = next(r for r in rows if "lr=0.003" in r)
    assert "**2.060 ± 0.010**" in best and sum("**" in r for r in rows) == 1  # lower loss is better
    for gone in ("Verdicts", "Effects per task", "Reference study", "Agreement between tasks"):
        assert f"- **{gone}**:" in text and f"## {gone}" not in text
