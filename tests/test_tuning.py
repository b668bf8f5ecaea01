"""Equal tuning per arm (issue 27): the plan's tuning section, its trials, and the tuned effect's calibration."""

from __future__ import annotations

import numpy as np
import pytest

from modtransfer.core.errors import UserError
from modtransfer.reports.regimes import agreement, select, split_rows, tuned_effects
from modtransfer.run.tuning import parse_tuning

SPACE = {"lr": {"log_uniform": [3.0e-4, 3.0e-2]}, "warmup": {"uniform": [0.0, 0.2]}}


def test_trials_are_quasi_random_reproducible_and_inside_the_space():
    t = parse_tuning({"trials": 8, "studies": 3, "space": SPACE})
    pts = t.points()
    assert len(pts) == 24 and pts == parse_tuning({"trials": 8, "studies": 3, "space": SPACE}).points()
    for _, _, p in pts:
        assert 3e-4 <= p["lr"] <= 3e-2 and 0.0 <= p["warmup"] <= 0.2
    lrs = [p["lr"] for s, _, p in pts if s == 0]
    # a low-discrepancy draw covers both decades of the log range
    assert min(lrs) < 3e-3 < max(lrs)
    assert [p for s, _, p in pts if s == 0] != [p for s, _, p in pts if s == 1]   # studies are independent draws
    assert len(t.index()) == 24


@pytest.mark.parametrize("raw, match", [
    ({"trials": 0, "space": SPACE}, "trials must be a whole number"),
    ({"space": {}}, "space must map budget fields"),
    ({"space": {"lrr": {"uniform": [0.1, 0.2]}}}, "not a tunable budget field.*did you mean 'lr'"),
    ({"space": {"steps": {"uniform": [10, 20]}}}, "not a tunable budget field"),
    ({"space": {"lr": {"log_uniform": ["1e-4", "1e-2"]}}}, "write 1.0e-3"),
    ({"space": {"lr": {"log_uniform": [0.0, 1.0e-2]}}}, "low > 0 on a log scale"),
    ({"space": {"lr": {"normal": [0.0, 1.0]}}}, "unknown distribution"),
    ({"space": SPACE, "budget": 3}, "unknown key 'budget'"),
])
def test_bad_tuning_sections_are_one_line_errors(raw, match):
    with pytest.raises(UserError, match=match):
        parse_tuning(raw)


def test_split_rows_and_selection():
    t = parse_tuning({"trials": 2, "studies": 1, "space": SPACE})
    (_, _, p0), (_, _, p1) = t.points()
    def row(hp, seed, val, test, status="done"):
        return {"variant": "baseline", "task": "lm", "seed": seed, "hparams": hp, "status": status,
                "primary_value": val, "primary_metric": "val_loss", "higher_is_better": 0,
                "metrics": {"test_val_loss": test}}
    rows = [row({}, 0, 2.0, 2.1), row(p0, 0, 1.9, 2.0), row(p0, 1, 1.95, 2.0), row(p1, 0, 1.5, 1.6),
            row(p1, 1, 9.0, 9.0, "diverged")]
    other, trials = split_rows(rows, t.index())
    assert len(other) == 1 and {r["trial"] for r in trials} == {0, 1}
    assert select(trials, higher_is_better=False) == 0   # trial 1 had a diverged seed: not eligible


def _simulate(rng: np.random.Generator, shift: float, studies: int = 3, trials: int = 5, seeds: int = 3) -> list[dict]:
    """Trial rows of two arms whose test loss is a bowl in log lr, plus seed and trial noise; the variant
    is better by ``shift`` everywhere."""
    rows = []
    for study in range(studies):
        lrs = rng.uniform(-4, -2, trials)
        for arm, delta in (("baseline", 0.0), ("v", shift)):
            for trial, x in enumerate(lrs):
                for seed in range(seeds):
                    base = 2.0 + 0.3 * (x + 3) ** 2 - delta
                    val = base + rng.normal(0, 0.03)
                    test = base + rng.normal(0, 0.03)
                    rows.append({"variant": arm, "task": "t", "study": study, "trial": trial, "seed": seed,
                                 "status": "done", "primary_value": val, "primary_metric": "loss",
                                 "higher_is_better": 0, "hparams": {"lr": float(10 ** x)},
                                 "metrics": {"test_loss": test}})
    return rows


def test_tuned_call_is_calibrated_under_a_a_and_its_interval_covers():
    rng = np.random.default_rng(0)
    reps, false, cover = 400, 0, 0
    for _ in range(reps):
        (te,) = tuned_effects(_simulate(rng, 0.0), {"t": 0.05})
        false += te.call in ("better", "worse")
    for _ in range(reps):
        (te,) = tuned_effects(_simulate(rng, 0.04), {"t": 0.05})
        cover += te.ci[0] <= 0.04 <= te.ci[1]
    # 95% intervals: false calls about 5% (binomial SE 1.1% at 400 reps), coverage about 95%
    assert false / reps <= 0.085
    assert cover / reps >= 0.915


def test_regimes_agreement():
    assert agreement("better", "better") == "holds"
    assert agreement("better", "no change").startswith("differs")
    assert agreement("unclear", "better") == "not decided in both"
    assert tuned_effects([], {}) == []


# -- end to end: a small plan with tuning, an lr axis and a held-out task variant -------------------
def _small_plan(**extra):
    budget = {"steps": 20, "eval_every": 10, "eval_batches": 2, "batch_size": 8}
    return {"name": "fair", "size": "tiny", "seeds": 2, "variants": ["rmsnorm"], "executor": "local",
            "tasks": ["regression", "regression_product"], "wandb": {"mode": "disabled"},
            "task_budget": {"regression": dict(budget), "regression_product": dict(budget)}, **extra}


def test_tuning_plan_expands_trials_for_every_arm_and_scores_them_on_test(tmp_path):
    import json
    import sqlite3

    import yaml

    import modtransfer.cli.commands as cli
    from modtransfer.run.plan import load_plan

    tuning = {"trials": 1, "studies": 2, "space": {"lr": {"log_uniform": [1.0e-3, 1.0e-2]}}}
    plan = load_plan(_small_plan(tuning=tuning))
    per_arm_task = {}
    for c in plan.all_cells:
        per_arm_task.setdefault((c.variant, c.task), []).append(json.dumps(c.hparams, sort_keys=True))
        assert c.budget.test_batches == c.budget.eval_batches   # every cell of a tuning plan is scored on test
    settings = {tuple(sorted(set(v))) for v in per_arm_task.values()}
    assert len(settings) == 1 and len(next(iter(settings))) == 1 + 2   # drop-in + 2 studies x 1 trial, same for each arm
    base_ids = {c.cell_id for c in load_plan(_small_plan()).all_cells}
    assert base_ids <= {c.cell_id for c in plan.all_cells}   # test scoring observes: drop-in ids unchanged

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_small_plan(tuning=tuning)))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs")]) == 0
    db = sqlite3.connect(tmp_path / "runs" / "fair" / "results.sqlite")
    metrics = [json.loads(m) for (m,) in db.execute("SELECT metrics FROM cells WHERE status = 'done'")]
    assert metrics and all("test_val_mse" in m and m["test_val_mse"] != m["val_mse"] for m in metrics)
    report = (tmp_path / "runs" / "fair" / "report" / "report.md").read_text()
    section = report.split("## Drop-in and tuned", 1)[1].split("\n## ", 1)[0]
    assert "| rmsnorm | regression |" in section and "| rmsnorm | regression_product |" in section
    main = report.split("## Effects per task", 1)[1].split("\n## ", 1)[0]
    assert "lr=" not in main   # the trials stay out of the main calls
    assert "## Time to target" in report and "## Held-out task variants" in report


def test_lr_axis_gives_curves_and_widths(tmp_path):
    import yaml

    import modtransfer.cli.commands as cli

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_small_plan(tasks=["regression"], task_budget={"regression": {
        "steps": 20, "eval_batches": 2, "batch_size": 8}}, hparams={"lr": [1.0e-3, 1.0e-2]})))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs")]) == 0
    folder = tmp_path / "runs" / "fair" / "report"
    section = (folder / "report.md").read_text().split("## Learning-rate curves", 1)[1].split("\n## ", 1)[0]
    assert "| regression | baseline |" in section and "| regression | rmsnorm |" in section
    assert (folder / "lr_curve_0.png").stat().st_size > 1000


def test_tuning_needs_a_test_split(monkeypatch):
    from modtransfer.core.task import TASKS
    from modtransfer.run.plan import load_plan

    monkeypatch.setattr(TASKS.get("regression_product"), "has_test_split", False)
    with pytest.raises(UserError, match="has no test split"):
        load_plan(_small_plan(tuning={"space": {"lr": {"log_uniform": [1.0e-3, 1.0e-2]}}}))


def test_dry_run_counts_only_the_main_tests(tmp_path, capsys):
    import yaml

    import modtransfer.cli.commands as cli

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_small_plan(tuning={"trials": 2, "studies": 2,
                                                    "space": {"lr": {"log_uniform": [1.0e-3, 1.0e-2]}}})))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "alpha 0.05 / 2 tests" in out   # rmsnorm on 2 tasks at the drop-in setting; the 4 trials make no call


def test_dry_run_first_line_counts_every_axis(tmp_path, capsys):
    import yaml

    import modtransfer.cli.commands as cli

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(_small_plan(variants=["rmsnorm", "factorized_embedding"], hparams={"lr": [1.0e-3, 2.0e-3]},
                                            tuning={"trials": 2, "studies": 1,
                                                    "space": {"lr": {"log_uniform": [1.0e-3, 1.0e-2]}}})))
    assert cli.main(["run", str(p), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    # 3 arms x 2 tasks x 2 seeds x (2 lr + 2 trials) = 48, less factorized_embedding on both tasks (no vocabulary)
    assert first.startswith("plan 'fair': 32 cells (3 variants x 2 tasks x 2 seeds x 4 settings (incl. tuning trials), "
                            "less 2 variant x task pair(s) that cannot run)")
