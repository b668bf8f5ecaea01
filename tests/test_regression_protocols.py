"""Regression task options: attention across the batch (a study's layout) and a train-mode metric."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.core.model import build
from modtransfer.core.sizes import size_preset
from modtransfer.run.store import Store
from modtransfer.tasks.regression import Regression


def _model(task: Regression, **spec: object) -> torch.nn.Module:
    from modtransfer.builtins import load_builtins

    load_builtins()
    s = task.configure_spec(size_preset("tiny").replace(d_model=32, n_layers=1, d_ff=64, **spec))
    torch.manual_seed(0)
    return build(s, task.topology).eval()


@pytest.mark.parametrize("across", ["positions", "batch"])
def test_what_attention_mixes(across: str) -> None:
    task = Regression({"attend_across": across})
    model = _model(task)
    x = torch.randn(4, 10, 100)
    with torch.no_grad():
        base = task.predict(model, x)
        other_example = x.clone()
        other_example[1] += 1.0              # change example 1 only
        changed_by_example = (task.predict(model, other_example)[0] - base[0]).abs().max().item()
        other_position = x.clone()
        other_position[0, 3] += 1.0          # change position 3 of example 0 only
        changed_by_position = (task.predict(model, other_position)[0, 5] - base[0, 5]).abs().max().item()
    if across == "positions":
        assert changed_by_example == 0.0 and changed_by_position > 1e-4   # examples are independent
    else:
        assert changed_by_example > 1e-4 and changed_by_position == 0.0   # positions are independent


def test_train_mode_metric_is_stored_beside_the_eval_metric(tmp_path: Path) -> None:
    plan = {"name": "tm", "size": "tiny", "seeds": 1, "variants": [], "tasks": ["regression"],
            "spec": {"d_model": 32, "n_layers": 1, "d_ff": 64, "dropout": 0.3},
            "task_config": {"regression": {"train_mode_batches": 50}},
            "task_budget": {"regression": {"steps": 20, "batch_size": 8}}, "wandb": {"mode": "disabled"}}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(plan))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs"), "--no-report"]) == 0
    (row,) = Store(tmp_path / "runs" / "tm" / "results.sqlite").rows()
    m = row["metrics"]
    assert row["primary_value"] == m["val_mse"]
    assert m["train_mode_mse"] > 0 and m["train_mode_loss"] == pytest.approx(m["train_mode_mse"] / 2)
    assert m["train_mode_mse"] != pytest.approx(m["val_mse"], rel=1e-6)   # dropout on, other batches


def test_train_mode_metric_restores_the_mode_and_does_not_train() -> None:
    task = Regression({"train_mode_batches": 5})
    model = _model(task, dropout=0.2)
    before = [p.clone() for p in model.parameters()]
    a = task.train_mode_mse(model, 5, 8)
    b = task.train_mode_mse(model, 5, 8)
    assert not model.training
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert a > 0 and b > 0


@pytest.mark.parametrize(("config", "fragment"), [
    ({"attend_across": "time"}, "attend_across"),
    ({"train_mode_batches": -1}, "train_mode_batches"),
])
def test_bad_options(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        Regression(config)
