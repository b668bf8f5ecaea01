"""Sweeps: spec fields and budget fields as axes, explicit rows, and a size axis."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.run.plan import hparam_rows, load_plan


def plan(**extra: Any) -> dict[str, Any]:
    return {"name": "sweep", "seeds": 1, "variants": ["depth_x2"], "tasks": ["regression"],
            "task_budget": {"regression": {"steps": 10, "batch_size": 8}}, "wandb": {"mode": "disabled"}, **extra}


def test_axes_cross_and_rows_are_taken_as_given() -> None:
    assert hparam_rows({"lr": [1, 2], "n_layers": [1, 2, 3]}) == [
        {"lr": lr, "n_layers": n} for lr in (1, 2) for n in (1, 2, 3)]
    rows = [{"lr": 1.0e-3}, {"lr": 1.0e-4, "n_layers": 2}, {"batch_size": 64}]
    assert hparam_rows(rows) == rows


def test_spec_field_axis_is_applied_before_the_variant() -> None:
    p = load_plan(plan(hparams={"n_layers": [1, 3]}))
    layers = {(c.variant, c.hparams["n_layers"]): c.spec.n_layers for c in p.all_cells}
    # depth_x2 doubles whatever depth the setting gives the baseline
    assert layers == {("baseline", 1): 1, ("baseline", 3): 3, ("depth_x2", 1): 2, ("depth_x2", 3): 6}
    ids = {c.cell_id for c in p.all_cells}
    assert len(ids) == len(p.all_cells) == 4


def test_rows_mix_budget_and_spec_fields() -> None:
    p = load_plan(plan(hparams=[{"lr": 1.0e-3}, {"lr": 1.0e-4, "n_layers": 1}, {"batch_size": 4}]))
    base = {c.cell_id: c for c in p.all_cells if c.variant == "baseline"}
    got = sorted((c.budget.lr, c.budget.batch_size, c.spec.n_layers) for c in base.values())
    tiny_layers = load_plan(plan()).base_spec.n_layers
    assert got == sorted([(1.0e-3, 8, tiny_layers), (1.0e-4, 8, 1), (1.0e-3, 4, tiny_layers)])


def test_size_axis() -> None:
    p = load_plan(plan(sizes=["tiny", "small"], variants=["gelu"]))
    assert {(c.size, c.spec.d_model) for c in p.all_cells if c.variant == "baseline"} == {
        ("tiny", load_plan(plan(size="tiny")).base_spec.d_model), ("small", load_plan(plan(size="small")).base_spec.d_model)}
    assert len(p.all_cells) == 4


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"hparams": {"n_layerz": [1, 2]}}, "not a budget field, a spec field or 'init'"),
    ({"hparams": {"vocab_size": [10]}}, "not a budget field"),          # the task sets it
    ({"hparams": [{"lr": 0.1}, {}]}, "plan.hparams[1] must be a mapping"),
    ({"hparams": [{"lr": 0.1}, {"lr": 0.1}]}, "same row twice"),
    ({"hparams": [{"n_layers": 0}]}, "n_layers"),
    ({"hparams": [{"init": 3}]}, "init scheme names"),
    ({"sizes": ["tiny", "tiny"]}, "distinct"),
    ({"sizes": ["tiny"], "size": "small"}, "both size and sizes"),
    ({"sizes": ["tiny", "huge"]}, "unknown size preset"),
])
def test_bad_sweeps_are_refused(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UserError) as err:
        load_plan(plan(**extra))
    assert fragment in str(err.value)


def test_a_spec_axis_runs_and_is_reported_per_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(plan(variants=["gelu"], hparams=[{"n_layers": 1}, {"n_layers": 2, "lr": 2.0e-3}])))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "gelu [n_layers=1]" in out and "gelu [lr=0.002, n_layers=2]" in out
    with open(tmp_path / "runs" / "sweep" / "report" / "transfer.csv", newline="") as f:
        labels = sorted(r["task"] for r in csv.DictReader(f))
    assert labels == ["regression [lr=0.002, n_layers=2]", "regression [n_layers=1]"]


def test_implementations_axis_pairs_within_each_and_reports_the_sign(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(plan(variants=["gelu", "post_ln"], seeds=3, implementations=["modtransfer", "torch"],
                                     task_budget={"regression": {"steps": 40, "batch_size": 16, "lr": 2.0e-3}})))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "post_ln" in out and "on implementation torch: equals the 'torch' baseline" in out
    with open(tmp_path / "runs" / "sweep" / "report" / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["variant"], r["task"]) for r in rows) == [
        ("gelu", "regression {implementation=modtransfer}"), ("gelu", "regression {implementation=torch}"),
        ("post_ln", "regression {implementation=modtransfer}")]
    md = (tmp_path / "runs" / "sweep" / "report" / "report.md").read_text()
    assert "## Across implementations" in md and "| gelu | regression |" in md


def test_implementation_names_are_checked() -> None:
    with pytest.raises(UserError, match="did you mean 'torch'"):
        load_plan(plan(implementation="torhc"))
    with pytest.raises(UserError, match="both implementation and implementations"):
        load_plan(plan(implementation="torch", implementations=["t5"]))
    p = load_plan(plan(implementation="gpt2"))
    assert {c.spec.implementation for c in p.all_cells} == {"gpt2"}
