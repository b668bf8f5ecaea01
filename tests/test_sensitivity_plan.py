"""The shipped training-sensitivity plan: it validates as written, and a narrowed copy runs and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.reports.plateau import wilson
from modtransfer.run.plan import load_plan

PLAN = Path(__file__).resolve().parents[1] / "configs" / "bench" / "sensitivity-toy.yaml"
PUBLISHED = PLAN.with_name("sensitivity-published.yaml")


def test_shipped_plan_is_the_study() -> None:
    plan = load_plan(PLAN)
    assert plan.implementations == ["torch"] and len(plan.seeds) >= 8
    cells = plan.all_cells
    spec = cells[0].spec
    assert (spec.d_model, spec.n_heads, spec.residual, spec.bias, spec.clone_layers) == (256, 4, "post", True, True)
    assert spec.dropout_for("embed") == 0.0 and spec.dropout_for("residual") == 0.1   # no input dropout
    settings = {tuple(sorted(c.hparams.items())) for c in cells}
    lrs = {dict(s).get("lr") for s in settings} - {None}
    assert lrs == {1.0e-3, 1.0e-4, 1.0e-5}
    inits = {dict(s).get("init") for s in settings} - {None}
    assert "normal(std=0.1, scope=matrices)" in inits and "kaiming_normal(scope=matrices)" in inits and len(inits) == 11
    assert all(i == "default" or i.endswith("scope=matrices)") for i in inits)   # the study's idiom
    assert {"n_layers": 2} in [dict(s) for s in settings] and {"batch_size": 64} in [dict(s) for s in settings]
    assert all(c.task_config["attend_across"] == "batch" and c.task_config["train_mode_batches"] == 1000
               for c in cells)
    assert all(c.budget.diverge_factor == 0.0 and c.budget.eval_every == 0 for c in cells)
    assert {c.spec.n_layers for c in cells} == {6, 2}


def test_published_plan_is_rows_of_the_study() -> None:
    """The narrowed plan: some of the study's settings, 3 seeds or more, nothing else changed but the eval batches."""
    full, narrow = load_plan(PLAN), load_plan(PUBLISHED)
    assert len(narrow.seeds) >= 3
    study = {(c.spec, c.budget, json.dumps({**c.task_config, "train_mode_batches": 100}, sort_keys=True))
             for c in full.all_cells}
    for c in narrow.all_cells:   # each cell is one of the study's (model, budget, task), scored on 100 batches
        assert (c.spec, c.budget, json.dumps(c.task_config, sort_keys=True)) in study, c.hparams
    assert len({json.dumps(c.hparams, sort_keys=True) for c in narrow.all_cells}) >= 3


def test_wilson_interval() -> None:
    lo, hi = wilson(0, 8)
    assert lo == 0.0 and 0.3 < hi < 0.4          # 0 of 8 still allows a rate up to about a third
    lo, hi = wilson(4, 8)
    assert lo < 0.5 < hi and hi - lo > 0.5
    assert wilson(0, 0) is None


def test_narrowed_copy_runs_and_the_section_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(PLAN.read_text())
    raw.update(name="sens", seeds=2, wandb={"mode": "disabled"},
               spec={**raw["spec"], "d_model": 32, "n_layers": 1, "d_ff": 64})
    raw["task_budget"]["regression"].update(steps=25, batch_size=8)
    raw["task_config"]["regression"]["train_mode_batches"] = 20
    raw["hparams"] = [{"cross": {"lr": [3.0e-3, 1.0e-6], "init": ["default", "normal(std=0.1, scope=all)"]}},
                      {"batch_size": 16}]
    p = tmp_path / "sens.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs")]) == 0
    report = tmp_path / "runs" / "sens" / "report"
    md = (report / "report.md").read_text()
    assert "## Training sensitivity" in md
    # lr 1e-6 for 25 steps never leaves the plateau: every seed is a failure
    section = md.split("## Training sensitivity", 1)[1]
    row = next(line for line in section.splitlines() if "init=default, lr=1e-06" in line)
    assert "| 2 | 2 (2 on plateau, 0 diverged) | 1 [" in row
    assert list(report.glob("plateau_regression_baseline.png")) and list(report.glob("spread_regression_baseline.png"))
    html = (report / "index.html").read_text()
    assert "Training sensitivity" in html
    # the baseline-only sweep also gets its table of values per setting
    sweep = md.split("## Baseline per hyper-parameter setting", 1)[1].split("\n## ", 1)[0]
    assert sweep.count("| regression |") == 5 and "**" in sweep
