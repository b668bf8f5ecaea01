"""Divergence: a cell whose loss blows up stops early, is stored ``diverged``, and has no value.

Real tiny regression cells (a few dozen steps, one thread). A diverged cell is a failure,
counted as a rate: its metric must never reach the store's ``primary_value`` (and so a mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import modtransfer.tasks  # noqa: F401  (registers the built-in tasks)
from modtransfer.core.task import TASKS, Budget, register_task
from modtransfer.run.cell import run_cell
from modtransfer.run.divergence import (
    DivergenceMonitor,
    diverge_factor_for,
    diverge_patience_for,
    divergence_limit,
)
from modtransfer.run.plan import load_plan
from modtransfer.run.plan_types import Cell
from modtransfer.run.store import Store

STEPS = 40
SPEC = {"d_model": 32, "n_layers": 1, "d_ff": 64}
Regression = TASKS.get("regression")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cell(task: str = "regression", **budget: Any) -> Cell:
    """One tiny cell of ``task`` with ``budget`` overrides (W&B off)."""
    plan = load_plan({"name": "dv", "size": "tiny", "seeds": [0], "variants": [], "tasks": [task], "spec": dict(SPEC),
                      "task_budget": {task: {"steps": STEPS, "batch_size": 8, **budget}},
                      "wandb": {"mode": "disabled"}})
    (cell,) = plan.cells
    return cell


def train(cell: Cell, tmp_path: Path) -> dict[str, Any]:
    return run_cell(cell, tmp_path, wandb_cfg={"mode": "disabled"}, device="cpu")


@pytest.mark.parametrize("lr", [10.0, 100.0])
def test_huge_learning_rate_diverges_early_and_stores_no_value(tmp_path: Path, lr: float) -> None:
    row = train(tiny_cell(lr=lr, diverge_factor=4.0), tmp_path)
    assert row["status"] == "diverged", row["error"]
    assert row["failed_step"] is not None and 0 <= row["failed_step"] < STEPS
    assert row["steps"] < STEPS, "training should stop at the divergence, not run to the end"
    assert row["primary_value"] is None and row["metrics"] == {}
    assert "4 x its initial value" in row["error"]
    store = Store(tmp_path / "results.sqlite")
    assert store.record(row)
    (stored,) = store.rows()
    assert (stored["status"], stored["primary_value"], stored["failed_step"]) == ("diverged", None, row["failed_step"])


def test_sane_learning_rate_is_not_flagged(tmp_path: Path) -> None:
    row = train(tiny_cell(lr=1e-3, diverge_factor=4.0), tmp_path)
    assert row["status"] == "done", row["error"]
    assert row["failed_step"] is None and math.isfinite(row["primary_value"])


def test_a_spike_that_training_recovers_from_is_not_divergence(tmp_path: Path) -> None:
    """Fixup at lr 0.03: the loss jumps to hundreds of times its start for a few steps, then the
    cell learns (val MSE about 2, the trivial score about 7); it is a result, not a failure."""
    plan = load_plan({"name": "dv", "size": "tiny", "seeds": [1], "variants": ["fixup"], "tasks": ["regression"],
                      "task_budget": {"regression": {"steps": 200, "batch_size": 16, "lr": 0.03, "diverge_factor": 4.0}},
                      "wandb": {"mode": "disabled"}})
    (cell,) = [c for c in plan.cells if c.variant == "fixup"]
    row = train(cell, tmp_path)
    losses = [p["train_loss"] for p in row["curve"] if p.get("train_loss") is not None]
    assert max(losses) > 100 * losses[-1], "the spike this test is about did not happen"
    assert row["status"] == "done", row["error"]
    assert row["primary_value"] < 4.0


def test_task_may_declare_its_own_factor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Task.diverge_factor`` applies while the budget keeps the default; a plan's own value wins."""
    default = Budget().diverge_factor
    own = 4.0 if default != 4.0 else 3.0
    monkeypatch.setattr(Regression, "diverge_factor", own, raising=False)
    task = Regression()
    assert diverge_factor_for(task, Budget()) == own
    explicit = 0.0 if default != 0.0 else 2.0
    assert diverge_factor_for(task, Budget(diverge_factor=explicit)) == explicit
    row = train(tiny_cell(lr=10.0), tmp_path)  # the loss explodes but stays finite at lr 10
    assert row["status"] == "diverged" and row["primary_value"] is None, row["error"]
    assert f"{own:g} x its initial value" in row["error"]
    if explicit == 0.0:  # the plan turned the factor off: only NaN/inf count, and this loss stays finite
        row = train(tiny_cell(lr=10.0, diverge_factor=0.0), tmp_path)
        assert row["status"] == "done" and all(math.isfinite(p["train_loss"]) for p in row["curve"]), row["error"]


def watch(losses: list[float], limit: float | None, patience: int) -> int | None:
    monitor = DivergenceMonitor(patience)
    monitor.limit = limit
    for step, loss in enumerate(losses):
        monitor.update(torch.tensor(loss), step)
    return monitor.first_bad_step()


def test_monitor_flags_nan_at_once_and_a_high_loss_only_when_it_stays() -> None:
    calm = [5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.2, 1.0]
    assert watch(calm, 20.0, 3) is None
    assert watch(calm[:4] + [math.nan] + calm[4:], 20.0, 3) == 4
    assert watch(calm[:4] + [math.inf] + calm[4:], None, 3) == 4
    spike = calm[:3] + [500.0, 60.0] + calm[3:]  # Fixup at a high lr: two steps up, then it learns
    assert watch(spike, 20.0, 3) is None
    blowup = calm[:3] + [30.0, 1e3, 1e5, 1e4, 1e6] + calm[3:]
    assert watch(blowup, 20.0, 3) == 3, "failed_step is where the blow-up began"
    assert watch(blowup, None, 3) is None  # no limit (factor 0, or a non-positive start): NaN/inf only
    assert watch(calm[:3] + [30.0, 30.0, 1.0, 30.0, 30.0, 30.0], 20.0, 3) == 6
    monitor = DivergenceMonitor(10)  # blew up in the last steps of the budget: diverged when training ends
    monitor.limit = 20.0
    for step, loss in enumerate(calm + [50.0, 80.0]):
        monitor.update(torch.tensor(loss), step)
    assert monitor.first_bad_step() is None and monitor.first_bad_step(final=True) == len(calm)


def test_patience_scales_with_short_budgets() -> None:
    task = Regression()
    assert diverge_patience_for(task, Budget(steps=1000)) == 20
    assert diverge_patience_for(task, Budget(steps=40)) == 4
    assert diverge_patience_for(task, Budget(steps=5)) == 1


def test_divergence_limit_only_for_a_positive_finite_start() -> None:
    assert divergence_limit(2.0, 4.0) == 8.0
    assert divergence_limit(2.0, 0.0) is None
    for start in (0.0, -3.0, math.nan, math.inf):
        assert divergence_limit(start, 4.0) is None


@pytest.fixture
def negative_loss_task(temporary_plugin: Callable[[str | Path], str | None]) -> str:
    """Regression with its loss shifted below zero (as a log-likelihood loss may be)."""

    @register_task("dv_negative_loss")
    class NegativeLoss(Regression):  # type: ignore[misc, valid-type]
        def loss(self, model: Any, batch: Any) -> torch.Tensor:
            return super().loss(model, batch) - 100.0

    return "dv_negative_loss"


def test_negative_loss_is_not_mistaken_for_divergence(tmp_path: Path, negative_loss_task: str) -> None:
    row = train(tiny_cell(negative_loss_task, lr=1e-3, diverge_factor=4.0), tmp_path)
    assert row["status"] == "done", row["error"]
    assert math.isfinite(row["primary_value"])


@pytest.fixture
def nan_val_loss_task(temporary_plugin: Callable[[str | Path], str | None]) -> str:
    """A finite primary metric next to a NaN ``val_loss``: a BLEU of garbage from a NaN model."""

    @register_task("dv_nan_val_loss")
    class NanValLoss(Regression):  # type: ignore[misc, valid-type]
        def evaluate(self, model: Any, batches: list[Any]) -> dict[str, float]:
            return {**super().evaluate(model, batches), "val_loss": math.nan}

    return "dv_nan_val_loss"


def test_non_finite_final_evaluation_is_diverged(tmp_path: Path, nan_val_loss_task: str) -> None:
    row = train(tiny_cell(nan_val_loss_task, lr=1e-3), tmp_path)
    assert row["status"] == "diverged" and row["failed_step"] == row["steps"]
    assert row["primary_value"] is None and "val_loss" in row["error"]
    assert row["metrics"]["val_loss"] is None  # stored as JSON null, never NaN


def test_default_budget_catches_an_exploding_loss_end_to_end(tmp_path: Path) -> None:
    """No diverge_factor in the plan: ``lr: 10`` ends ``diverged`` (not ``done`` with a huge metric), the run
    exits 0 (divergence is a result), and the report counts it as a failure rate, never in a mean."""
    import csv

    import yaml

    import modtransfer.cli.commands as cli
    from modtransfer.run.store import Store

    plan = {"name": "boom", "size": "tiny", "seeds": 3, "variants": ["gelu"], "tasks": ["regression"],
            "task_budget": {"regression": {"steps": 60, "batch_size": 16, "lr": 3.0e-3, "schedule": "constant"}},
            "hparams": {"lr": [3.0e-3, 10.0]}, "wandb": {"mode": "disabled"}}
    path = tmp_path / "boom.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert cli.main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 0
    rows = Store(tmp_path / "runs" / "boom" / "results.sqlite").rows()
    hot = [r for r in rows if r["hparams"] == {"lr": 10.0}]
    assert hot and all(r["status"] == "diverged" and r["primary_value"] is None for r in hot)
    assert all(r["status"] == "done" for r in rows if r["hparams"] == {"lr": 3.0e-3})
    with open(tmp_path / "runs" / "boom" / "report" / "transfer.csv", newline="") as f:
        table = {(r["variant"], r["hparams"]): r for r in csv.DictReader(f)}
    hot_row = table[("gelu", '{"lr": 10.0}')]
    assert hot_row["call"] == "unstable" and hot_row["diverged_rate"] == "1.0" and hot_row["variant_mean"] == ""
