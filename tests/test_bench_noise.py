"""``modtransfer bench noise``: its runs are the cells they stand for, each source is varied alone,
and the record it writes is found by a dry run of a plan at the same budget (and only then)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from modtransfer.bench import noise
from modtransfer.cli.commands import main
from modtransfer.run.noise_records import baseline_cell, cell_noise_key, read_cell_noise
from modtransfer.run.plan import load_plan
from modtransfer.tasks.regression import Regression

SPEC = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}


def plan_dict(**over: Any) -> dict[str, Any]:
    plan = {"name": "nz", "size": "tiny", "seeds": 1, "tasks": ["regression"], "variants": ["gelu"], "spec": SPEC,
            "budget": {"steps": 8, "batch_size": 4, "eval_batches": 2}, "wandb": {"mode": "disabled"}}
    plan.update(over)
    return plan


def test_a_run_with_every_source_at_seed_s_is_the_cell_of_seed_s(tmp_path: Path) -> None:
    from modtransfer.run.cell import run_cell

    plan = load_plan(plan_dict(seeds=[3], variants=[], budget={"steps": 20, "batch_size": 4, "eval_batches": 2}))
    cell = plan.cells[0]
    row = run_cell(cell, tmp_path, wandb_cfg={"mode": "disabled"}, device="cpu")
    task = Regression(cell.task_config)
    module = noise.train_member(cell, task, noise.Member(3, 3, 3, 3))
    value = noise.score(task, module.model, task.val_batches(3, cell.budget.batch_size, cell.budget.eval_batches))
    assert row["status"] == "done" and module.status == "done"
    assert value == pytest.approx(row["primary_value"], rel=1e-5)


def test_the_noise_key_is_the_plans_configuration() -> None:
    a = baseline_cell(load_plan(plan_dict()), "regression")
    same = baseline_cell(load_plan(plan_dict(budget={"steps": 8, "batch_size": 4, "eval_batches": 2, "eval_every": 4},
                                             task_config={"regression": {"positions": 10}})), "regression")
    other = baseline_cell(load_plan(plan_dict(budget={"steps": 9, "batch_size": 4, "eval_batches": 2})), "regression")
    wider = baseline_cell(load_plan(plan_dict(spec={**SPEC, "d_ff": 128})), "regression")
    assert cell_noise_key(a) == cell_noise_key(same)  # evaluation cadence and explicit defaults change nothing
    assert len({cell_noise_key(a), cell_noise_key(other), cell_noise_key(wider)}) == 3


def test_bench_noise_prints_each_source_and_the_dry_run_uses_its_record(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MODTRANSFER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan_dict()))
    assert main(["bench", "noise", "regression", "--plan", str(path), "--seeds", "3", "--variants", "gelu"]) == 0
    out = capsys.readouterr().out
    for source in ("| all sources (ordinary cells) |", "| initialisation |", "| data order |",
                   "| dropout | - | - | none: dropout 0 |", "| evaluation sample |", "| gelu |"):
        assert source in out
    assert "budget measured: plan 'nz''s budget: 8 steps x batch 4" in out
    record = read_cell_noise(baseline_cell(load_plan(str(path)), "regression"))
    assert record is not None and record["seeds"] == 3 and record["runs"] == 10  # 3 x 3 baseline runs, less 2 shared
    assert set(record["components"]) == set(noise.SOURCES) and record["pairs"]["gelu"]["n"] == 3
    assert record["seed_sd"] > 0 and record["components"]["evaluation sample"]["n"] == 3
    assert record["paired_diff_sd"] == record["pairs"]["gelu"]["diff_sd"]
    json.dumps(record)  # plain JSON, no NaN
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "measured by `bench noise` at the plan's budget" in out
    assert f"paired-difference SD {record['paired_diff_sd']:.3g} val_mse" in out
    # a quick look at fewer steps is another budget: its record is not this plan's
    assert main(["bench", "noise", "regression", "--plan", str(path), "--seeds", "2", "--variants", "",
                 "--steps", "4"]) == 0
    assert "shortened by --steps to 4 steps (not 8" in capsys.readouterr().out
    assert read_cell_noise(baseline_cell(load_plan(str(path)), "regression"))["seeds"] == 3


class FixedHeldOut(Regression):
    """Regression whose held-out set ignores the seed (as lm's and mt's do)."""

    def val_batches(self, seed: int, batch_size: int, limit: int) -> list:
        return super().val_batches(0, batch_size, limit)


def test_dropout_and_a_fixed_held_out_set_are_measured_their_own_way() -> None:
    plan = load_plan(plan_dict(variants=[], spec={**SPEC, "dropout": 0.1}))
    cells = {c.variant: c for c in plan.cells}
    bench = noise.Bench(cells, FixedHeldOut(), [0, 1, 2], "cpu")
    assert bench.dropout and not bench.val_depends_on_seed
    bench.measure()
    comp = noise.components(bench)
    assert comp["dropout"]["n"] == 3 and comp["dropout"]["sd"] > 0
    assert "split halves" in comp["evaluation sample"]["note"] and comp["evaluation sample"]["n"] == 3
    assert math.isfinite(comp["evaluation sample"]["sd"])
    # the dropout seed moves only the dropout stream: same init and data, different masks, different result
    r = bench.results
    assert r[("baseline", noise.Member(0, 0, 1, 0))]["value"] != r[("baseline", noise.Member(0, 0, 0, 0))]["value"]
