"""The shipped modern-cpu study (issue 26, part 2): it plans as written, and a shortened copy runs at one seed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.variant import VARIANTS
from modtransfer.run.plan import load_plan
from modtransfer.run.store import Store

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "configs" / "bench" / "modern-cpu.yaml"
SOURCES = ROOT / "reports" / "data" / "modern_sources.csv"
MODERN = {"relu_squared", "qk_norm", "attention_softcap", "sliding_window", "partial_rope", "value_residual",
          "value_embeddings", "unet_skips", "token_shift", "zero_init", "output_softcap", "z_loss", "multi_token"}
NEEDS_VOCAB = {"value_embeddings", "output_softcap", "z_loss"}


def test_shipped_plan_crosses_every_modern_variant_with_three_tasks() -> None:
    plan = load_plan(PLAN)
    assert set(plan.variants) - {"baseline"} == MODERN and set(plan.tasks) == {"regression", "lm", "mt"}
    skipped = {(s["variant"], s["task"]) for s in plan.skipped}
    assert skipped == {(v, "regression") for v in NEEDS_VOCAB | {"multi_token"}} | {("multi_token", "mt")}
    per_seed = 14 * 3 - len(skipped)
    assert len(plan.cells) == per_seed * 3                       # 3 seeds first, up to 6 where unclear
    # budgets that learn (the transfer-cpu study's): lm's default, mt's longer one, regression's default
    assert {c.task: c.budget.steps for c in plan.cells} == {"lm": 1000, "mt": 2000, "regression": 400}


def test_every_modern_variant_has_its_source_row() -> None:
    with SOURCES.open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == MODERN
    for name, row in rows.items():
        assert row["source"] and row["claim"], name
        assert VARIANTS.entry(name).meta["paper"], name


def _short_copy(tmp_path: Path) -> Path:
    raw = yaml.safe_load(PLAN.read_text())
    raw.update(name="modern-short", seeds=1, wandb={"mode": "disabled"}, executor="local",
               spec={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64})
    raw["task_config"]["mt"].update(bleu_sentences=4)
    raw["task_budget"] = {
        "regression": {"steps": 20, "batch_size": 8, "eval_every": 0},
        "lm": {"steps": 20, "batch_size": 4, "eval_every": 0},
        "mt": {"steps": 10, "batch_size": 4, "eval_every": 0},
    }
    path = tmp_path / "modern-short.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_short_copy_plans_and_runs_at_one_seed(tmp_path: Path, one_thread: None) -> None:
    path = _short_copy(tmp_path)
    plan = load_plan(path)
    assert len(plan.cells) == 14 * 3 - 5 and {c.seed for c in plan.cells} == {0}
    runs = tmp_path / "runs"
    assert cli.main(["run", str(path), "--runs-dir", str(runs)]) == 0
    rows = Store(runs / "modern-short" / "results.sqlite").rows()
    assert len(rows) == len(plan.cells)
    bad = [(r["variant"], r["task"], r["status"], r["error"]) for r in rows if r["status"] != "done"]
    assert not bad
    assert {r["variant"] for r in rows} == MODERN | {"baseline"}
    assert (runs / "modern-short" / "report" / "report.md").exists()
