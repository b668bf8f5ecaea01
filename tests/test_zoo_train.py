"""Every registered variant trains for a few steps on every task it applies to (slow)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from modtransfer.builtins import load_builtins
from modtransfer.core.errors import UserError
from modtransfer.core.task import TASKS
from modtransfer.core.variant import VARIANTS
from modtransfer.run.plan import load_plan

load_builtins()


def _cells():
    plan = load_plan({"name": "zoo-train", "size": "tiny", "tasks": TASKS.names(), "variants": VARIANTS.names(),
                      "spec": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
                      "budget": {"steps": 3, "batch_size": 4, "eval_batches": 1}, "wandb": {"mode": "disabled"},
                      "task_config": {"mt": {"bleu_sentences": 4}}})
    return plan.cells


@pytest.mark.slow
@pytest.mark.parametrize("cell", _cells(), ids=lambda c: f"{c.task}-{c.variant}")
def test_variant_trains_on_task(cell):
    task = TASKS.get(cell.task)(cell.task_config)
    try:
        task.prepare()
    except UserError as exc:  # data not fetchable here: say so rather than pass silently
        pytest.skip(f"{cell.task} data unavailable: {exc}")
    from modtransfer.run.cell import run_cell

    with tempfile.TemporaryDirectory() as tmp:
        row = run_cell(cell, Path(tmp), wandb_cfg={"mode": "disabled"},
                       cache_dir=Path(os.environ["MODTRANSFER_CACHE"]) if "MODTRANSFER_CACHE" in os.environ else None)
    assert row["status"] == "done", row["error"]
    assert row["steps"] == 3 and row["primary_value"] is not None and row["params"] > 0
