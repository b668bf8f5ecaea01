"""Plans and runs as the verdict statistics need them: adaptive seeds, margins, order, stored plans, power.

Runs train tiny regression cells in-process (no data to fetch). The A/A check (``sinusoidal``
equals the baseline) runs the real CLI end to end in the slow suite.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.run.plan import load_plan
from modtransfer.run.store import Store


def plan_dict(name: str, **extra: Any) -> dict[str, Any]:
    base = {"name": name, "size": "tiny", "seeds": 3, "variants": ["gelu"], "tasks": ["regression"],
            "task_budget": {"regression": {"steps": 40, "batch_size": 16, "lr": 3.0e-3, "schedule": "constant"}},
            "wandb": {"mode": "disabled"}}
    base.update(extra)
    return base


def write(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_adaptive_seeds_expand_looks_and_first_round() -> None:
    plan = load_plan(plan_dict("ad", seeds={"min": 3, "max": 9}))
    assert plan.looks == [3, 6, 9] and plan.adaptive and len(plan.seeds) == 9
    assert {c.seed for c in plan.cells} == {0, 1, 2}
    assert len(plan.all_cells) == 2 * 9 and len(plan.cells) == 2 * 3
    only = plan.cells_through(6, {("gelu", "regression", "{}")})
    assert {c.seed for c in only} == set(range(6)) and {c.variant for c in only} == {"baseline", "gelu"}
    assert plan.cells_through(6, set()) == []


@pytest.mark.parametrize(("seeds", "fragment"), [
    ({"min": 2, "max": 6}, "plan.seeds.min must be >= 3"),
    ({"min": 3}, "needs both min and max"),
    ({"min": 6, "max": 3}, "must be >= plan.seeds.min"),
    ({"min": 3, "max": 12, "stride": 2}, "unknown key 'stride'"),
    ({"min": 3, "max": 5000}, "more than 1000"),
    (10**9, "more than 1000"),
])
def test_bad_seed_settings_are_refused(seeds: Any, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        load_plan(plan_dict("bad", seeds=seeds))


@pytest.mark.parametrize(("margins", "fragment"), [
    ({"lm": 0.01}, "not a task of this plan"),
    ({"regression": "1e-3"}, "write 1.0e-3"),
    ({"regression": -0.1}, "positive number"),
    ({"regression": float("nan")}, "positive number"),
])
def test_bad_margins_are_refused(margins: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        load_plan(plan_dict("bad", margins=margins))


def test_include_baseline_false_is_refused() -> None:
    with pytest.raises(UserError, match="include_baseline: false is not supported"):
        load_plan(plan_dict("nob", include_baseline=False))
    assert load_plan(plan_dict("yesb", include_baseline=True)).variants[0] == "baseline"


def test_cells_are_seed_major_with_variants_rotated() -> None:
    plan = load_plan(plan_dict("order", variants=["gelu", "swish"], seeds=3))
    seeds = [c.seed for c in plan.cells]
    assert seeds == sorted(seeds)  # seed-major
    firsts = [next(c.variant for c in plan.cells if c.seed == s) for s in range(3)]
    assert len(set(firsts)) == 3  # each seed starts with a different variant


def test_run_keeps_every_plan_tables_each_setting_and_stores_task_declarations(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    p1 = write(tmp_path / "a.yaml", plan_dict("shared", seeds=1, variants=[]))
    assert cli.main(["run", str(p1), "--runs-dir", str(runs), "--no-report"]) == 0
    p2 = write(tmp_path / "b.yaml", plan_dict("shared", seeds=1, variants=["gelu"], hparams={"lr": [1.0e-3, 2.0e-3]}))
    assert cli.main(["run", str(p2), "--runs-dir", str(runs), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "gelu [lr=0.001]" in out and "gelu [lr=0.002]" in out  # one row per setting, not an average
    meta = Store(runs / "shared" / "results.sqlite").meta()
    assert len(meta["plans"]) == 2 and meta["plans"][0]["variants"] == ["baseline"]
    assert meta["plan"]["variants"] == ["baseline", "gelu"]
    info = meta["tasks"]["regression"]
    assert info["margin"] > 0 and info["noise_sd"] > 0 and 6.0 < info["trivial"] < 8.0
    # running the same plan again does not store it twice
    assert cli.main(["run", str(p2), "--runs-dir", str(runs), "--no-report"]) == 0
    assert len(Store(runs / "shared" / "results.sqlite").meta()["plans"]) == 2


def test_dry_run_prints_power_and_warns_when_underpowered(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "p.yaml", plan_dict("pw", seeds=3, margins={"regression": 1.0e-4}))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    cap = capsys.readouterr()
    assert "regression: with 3 seeds the smallest callable effect is" in cap.out
    assert "declared by the task" in cap.out
    assert "cannot call effects smaller than" in cap.err and "seeds" in cap.err
    assert not (tmp_path / "runs").exists()
    p = write(tmp_path / "one.yaml", plan_dict("one", seeds=1))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert "give no better/worse/no change call" in capsys.readouterr().err


def test_adaptive_run_adds_rounds_only_to_undecided_pairs(tmp_path: Path) -> None:
    # sinusoidal equals the baseline: decided ("no change") at the first look; gelu at 40 steps is close to
    # the baseline with a tiny margin: undecided, so it gets the next round
    plan = plan_dict("adapt", variants=["sinusoidal", "gelu"], seeds={"min": 3, "max": 6},
                     margins={"regression": 1.0e-6})
    p = write(tmp_path / "ad.yaml", plan)
    runs = tmp_path / "runs"
    assert cli.main(["run", str(p), "--runs-dir", str(runs)]) == 0
    rows = Store(runs / "adapt" / "results.sqlite").rows()
    seeds = {v: sorted(r["seed"] for r in rows if r["variant"] == v) for v in ("baseline", "sinusoidal", "gelu")}
    assert seeds["sinusoidal"] == [0, 1, 2]
    assert seeds["baseline"] == seeds["gelu"]
    with open(runs / "adapt" / "report" / "transfer.csv", newline="") as f:
        table = {r["variant"]: r for r in csv.DictReader(f)}
    assert table["sinusoidal"]["call"] == "no change"
    if len(seeds["gelu"]) == 6:
        assert table["gelu"]["n_used"] == "6"
    # resuming repeats the same decisions and trains nothing
    n = len(rows)
    assert cli.main(["run", str(p), "--runs-dir", str(runs), "--no-report"]) == 0
    assert len(Store(runs / "adapt" / "results.sqlite").rows()) == n


@pytest.mark.slow
def test_aa_plan_makes_no_better_or_worse_call(tmp_path: Path) -> None:
    """sinusoidal is the baseline under another name: 6 seeds on regression must not call it better or worse."""
    plan = {"name": "aa", "size": "tiny", "seeds": 6, "variants": ["sinusoidal"], "tasks": ["regression"],
            "wandb": {"mode": "disabled"}}
    p = write(tmp_path / "aa.yaml", plan)
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs")]) == 0
    with open(tmp_path / "runs" / "aa" / "report" / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["call"] not in ("better", "worse")
    assert rows[0]["call"] == "no change" and rows[0]["baseline_learned"] == "learned"
    assert json.loads(rows[0]["hparams"]) == {}


def test_mixed_budgets_are_never_paired_and_status_groups_them(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A plan run at 10 steps, then the same plan name at 30 steps with a variant changed."""
    runs = tmp_path / "runs"
    short = plan_dict("mixed", seeds=3, variants=["gelu"],
                      task_budget={"regression": {"steps": 10, "batch_size": 16, "lr": 3.0e-3}})
    long = plan_dict("mixed", seeds=3, variants=["swish"],
                     task_budget={"regression": {"steps": 30, "batch_size": 16, "lr": 3.0e-3}})
    assert cli.main(["run", str(write(tmp_path / "s.yaml", short)), "--runs-dir", str(runs), "--no-report"]) == 0
    assert cli.main(["run", str(write(tmp_path / "l.yaml", long)), "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    with open(runs / "mixed" / "report" / "transfer.csv", newline="") as f:
        table = {r["variant"]: r for r in csv.DictReader(f)}
    # each variant is compared only with the baseline of its own budget, named in the condition
    assert table["gelu"]["task"] == "regression {steps=10}" and table["swish"]["task"] == "regression {steps=30}"
    rows = Store(runs / "mixed" / "results.sqlite").rows()
    base = {r["budget"]["steps"]: [r["primary_value"] for r in rows if r["variant"] == "baseline"
                                   and r["budget"]["steps"] == r["budget"]["steps"]] for r in rows}
    b30 = sorted(r["primary_value"] for r in rows if r["variant"] == "baseline" and r["budget"]["steps"] == 30)
    assert float(table["swish"]["baseline_mean"]) == pytest.approx(sum(b30) / 3)
    assert len(base) == 2
    assert cli.main(["status", str(runs / "mixed")]) == 0
    out = capsys.readouterr().out
    assert "(2 plans wrote to this store)" in out and "left 0 of 12" in out
    assert "regression: cells of 2 budgets/configurations" in out
    assert "steps=10: 6 cell(s)" in out and "steps=30: 6 cell(s)" in out


@pytest.mark.slow
def test_planted_cheat_is_called_better_on_lm_by_a_wide_margin(tmp_path: Path) -> None:
    """A test-only attention that sees one token ahead, 3 seeds at the lm task's default budget: the report
    must call it better, with the baseline shown to have learned the task."""
    plugin = Path(__file__).parent / "plugins" / "cheat_plugin.py"
    plan = {"name": "cheat", "size": "tiny", "seeds": 3, "variants": ["cheat_peek_ahead"], "tasks": ["lm"],
            "wandb": {"mode": "disabled"}}
    p = write(tmp_path / "cheat.yaml", plan)
    # --no-check: the contract gate would (rightly) refuse an attention that sees the future
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs"), "--plugin", str(plugin), "--no-check"]) == 0
    with open(tmp_path / "runs" / "cheat" / "report" / "transfer.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["baseline_learned"] == "learned"
    assert row["call"] == "better" and float(row["p_t_adj"]) < 0.05
    assert float(row["diff"]) > 20 * float(row["margin"])   # by a wide margin: many times the smallest effect
