"""Seeds as a batch dimension: grouping, exactness per member, fallbacks, executors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from modtransfer.core.components import register_component
from modtransfer.core.variant import register_variant
from modtransfer.run import cell as cell_module
from modtransfer.run.group import run_cells
from modtransfer.run.plan import load_plan
from modtransfer.run.stacking import alone_reason, describe_stacking, group_cells, why_not_stackable


def _plan(tmp_path: Path, **extra):
    raw = {"name": "stack", "size": "tiny", "seeds": 4, "variants": ["gelu"], "tasks": ["regression"],
           "budget": {"steps": 20, "eval_every": 0}, "wandb": {"mode": "disabled"}, **extra}
    return load_plan(raw)


def _short(cells, steps=20, **budget):
    return [dataclasses.replace(c, budget=c.budget.replace(steps=steps, **budget)) for c in cells]


def _losses(row):
    return [p["train_loss"] for p in row["curve"] if p.get("train_loss") is not None]


def test_groups_hold_cells_equal_but_for_the_seed(tmp_path):
    plan = _plan(tmp_path)
    groups = group_cells(plan.cells, "auto", device="cpu")
    assert sorted(len(g) for g in groups) == [4, 4]
    for g in groups:
        assert len({c.variant for c in g}) == 1 and sorted(c.seed for c in g) == [0, 1, 2, 3]
    capped = group_cells(plan.cells, 3, device="cpu")
    assert sorted(len(g) for g in capped) == [1, 1, 3, 3]
    assert all(len(g) == 1 for g in group_cells(plan.cells, 1, device="cpu"))


def test_cells_that_cannot_stack_say_why(tmp_path):
    plan = _plan(tmp_path, tasks=["regression", "lm"])
    lm = next(c for c in plan.cells if c.task == "lm")
    reg = next(c for c in plan.cells if c.task == "regression")
    assert alone_reason(reg, "auto", "cpu") is None
    assert "GFLOP per step or more" in alone_reason(lm, "auto", "cpu")
    assert alone_reason(lm, "auto", "cuda") is None        # on a GPU every stackable cell stacks
    dropped = dataclasses.replace(reg, spec=reg.spec.replace(dropout=0.1))
    assert "dropout" in why_not_stackable(dropped)
    timed = dataclasses.replace(reg, budget=reg.budget.replace(max_seconds=60.0))
    assert "max_seconds" in why_not_stackable(timed)
    lines = describe_stacking(plan.cells, "auto", device="cpu")
    assert "8 cells in 2 stacked groups" in lines[0]
    assert any(line.strip().startswith("one seed at a time: lm/baseline, lm/gelu") for line in lines[1:])


@pytest.mark.parametrize("task,seeds,variant", [("regression", 3, "baseline"), ("lm", 2, "baseline"),
                                                ("regression", 2, "rezero"), ("regression", 2, "fixup"),
                                                ("lm", 2, "sliding_window")])
def test_members_match_their_one_seed_runs(tmp_path, monkeypatch, task, seeds, variant):
    """Each member's first 20 losses equal the one-seed run of its seed (fp32, 1e-4 relative); same ids.
    ReZero and Fixup have scalar parameters (one value per member once stacked), clipped per member too;
    sliding_window counts its training steps (its window warm-up), which the stacked probe must not advance."""
    monkeypatch.setattr(cell_module, "LOG_EVERY", 1)
    torch.set_num_threads(1)
    plan = _plan(tmp_path, tasks=[task], seeds=seeds, variants=[] if variant == "baseline" else [variant])
    cells = _short([c for c in plan.cells if c.variant == variant])
    alone = [cell_module.run_cell(c, tmp_path, wandb_cfg={"mode": "disabled"}) for c in cells]
    stacked = list(run_cells(cells, tmp_path, wandb_cfg={"mode": "disabled"}))
    assert [r["cell_id"] for r in stacked] == [c.cell_id for c in cells] == [r["cell_id"] for r in alone]
    for k, (a, s) in enumerate(zip(alone, stacked, strict=True)):
        assert s["env"]["stack"]["members"] == seeds and s["env"]["stack"]["member"] == k
        assert s["status"] == a["status"] == "done" and s["steps"] == a["steps"] == 20
        la, ls = _losses(a), _losses(s)
        assert len(la) == len(ls) == 20
        assert max(abs(x - y) / abs(x) for x, y in zip(la, ls, strict=True)) < 1e-4
        assert s["primary_value"] == pytest.approx(a["primary_value"], rel=1e-4)
        assert s["wall_s"] == pytest.approx(s["env"]["stack"]["group_wall_s"] / seeds, abs=1e-3)  # stored to 1 ms
    # members of different seeds really differ (their own init and data)
    assert len({round(s["primary_value"], 6) for s in stacked}) == seeds


def test_padded_task_stacks_with_its_pad_values(tmp_path, monkeypatch):
    """mt's batches differ in length across members; padded with its stack_pad they train as alone."""
    monkeypatch.setattr(cell_module, "LOG_EVERY", 1)
    plan = _plan(tmp_path, tasks=["mt"], seeds=2, variants=[], task_config={"mt": {"bleu_sentences": 8}},
                 task_budget={"mt": {"eval_batches": 1}})
    cells = _short([c for c in plan.cells if c.variant == "baseline"], steps=12)
    alone = [cell_module.run_cell(c, tmp_path, wandb_cfg={"mode": "disabled"}) for c in cells]
    stacked = list(run_cells(cells, tmp_path, wandb_cfg={"mode": "disabled"}))
    for a, s in zip(alone, stacked, strict=True):
        assert s["env"]["stack"]["members"] == 2
        assert max(abs(x - y) / abs(x) for x, y in zip(_losses(a), _losses(s), strict=True)) < 1e-4


def test_a_diverging_member_stops_alone(tmp_path):
    """Divergence is watched per member: one member's NaN stops it, the others go on."""
    from modtransfer.core.model import build
    from modtransfer.core.task import TASKS
    from modtransfer.run.stacked import StackedCellModule

    plan = _plan(tmp_path, variants=[], seeds=3)
    cell = plan.cells[0]
    task = TASKS.get("regression")(cell.task_config, None)
    spec = task.configure_spec(cell.spec)
    models = [build(spec, task.topology, seed=s) for s in range(3)]
    module = StackedCellModule(models[0], models, task, cell.budget, [[], [], []], 5)
    for step in range(3):
        module.divergence[0].update(torch.tensor(1.0), step)
        module.divergence[1].update(torch.tensor(float("nan") if step == 2 else 1.0), step)
        module.divergence[2].update(torch.tensor(1.0), step)
    module._loss_sum += torch.tensor([3.0, float("nan"), 3.0])
    module._loss_n = 3
    module.flush(3)
    assert [m.status for m in module.members] == ["done", "diverged", "done"]
    assert module.members[1].failed_step == 2 and module.members[1].stopped_at == 3
    assert [m.active for m in module.members] == [True, False, True]


def test_a_model_that_cannot_run_stacked_falls_back_one_seed_at_a_time(tmp_path, temporary_plugin):
    """A component vmap cannot batch (a data-dependent branch) is found by the probe; its cells train
    one at a time, and their rows say why."""
    try:
        def branchy_relu(x):
            if x.is_meta:  # FLOPs are counted on the meta device, which has no values
                return torch.relu(x)
            return torch.relu(x) if float(x.detach().sum()) > -1e30 else x

        register_component("activation", "branchy_relu_test")(branchy_relu)

        register_variant("branchy_test", slot="activation")(lambda spec: spec.replace(activation="branchy_relu_test"))
        plan = _plan(tmp_path, variants=["branchy_test"], seeds=2)
        cells = _short([c for c in plan.cells if c.variant == "branchy_test"], steps=10)
        rows = list(run_cells(cells, tmp_path, wandb_cfg={"mode": "disabled"}))
        assert [r["status"] for r in rows] == ["done", "done"]
        for r in rows:
            assert r["env"]["stack"]["members"] == 1
            assert r["env"]["stack"]["fallback"].startswith("the model cannot run stacked")
    finally:
        from modtransfer.core.components import COMPONENTS
        from modtransfer.core.variant import VARIANTS

        COMPONENTS["activation"].unregister("branchy_relu_test")
        VARIANTS.unregister("branchy_test")


def test_processes_executor_trains_groups_and_resumes(tmp_path):
    """The worker pool trains a stacked group per worker; every member is its own row; a rerun trains nothing."""
    from modtransfer.run.runner import execute, resolve_layout
    from modtransfer.run.store import Store

    plan = _plan(tmp_path, seeds=3)
    plan.cells = _short(plan.cells, steps=20)
    layout = resolve_layout("processes", plan.cells, workers=2, threads=1, stack="auto")
    summaries = execute(plan, tmp_path, plan.cells, executor="processes", layout=layout)
    assert sorted(s["cell_id"] for s in summaries) == sorted(c.cell_id for c in plan.cells)
    rows = list(Store(tmp_path / "results.sqlite").rows())
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    assert sorted(r["env"]["stack"]["member"] for r in rows) == [0, 0, 1, 1, 2, 2]
    assert {r["env"]["stack"]["members"] for r in rows} == {3}
    again = execute(plan, tmp_path, plan.cells, executor="processes", layout=layout)
    assert all(s["status"] == "skipped" for s in again)


def test_layout_counts_a_group_as_one_job_of_its_size(tmp_path):
    from modtransfer.run.runner import resolve_layout

    plan = _plan(tmp_path, variants=[], seeds=8)
    stacked = resolve_layout("auto", plan.cells, stack="auto", device="cpu")
    alone = resolve_layout("auto", plan.cells, stack=1, device="cpu")
    assert stacked.workers == 1 and "1 cell" in stacked.reason     # one job: no second worker to feed
    assert alone.workers >= 1


@pytest.mark.slow
def test_stacked_and_one_by_one_final_metrics_are_equivalent(tmp_path):
    """Over 8 seeds at regression's default budget, stacked and one-by-one final val_mse are
    equivalent within the task's margin (TOST at 5%): two equal paths agree as distributions."""
    import numpy as np

    from modtransfer.core.task import TASKS
    from modtransfer.reports.stats import tost_pvalue

    torch.set_num_threads(1)
    plan = load_plan({"name": "tost", "size": "tiny", "seeds": 8, "variants": [], "tasks": ["regression"],
                      "wandb": {"mode": "disabled"}})
    cells = plan.cells
    alone = [cell_module.run_cell(c, tmp_path, wandb_cfg={"mode": "disabled"})["primary_value"] for c in cells]
    stacked = [r["primary_value"] for r in run_cells(cells, tmp_path, wandb_cfg={"mode": "disabled"})]
    d = np.array(stacked) - np.array(alone)
    assert float(tost_pvalue(d, TASKS.get("regression").margin)) < 0.05
