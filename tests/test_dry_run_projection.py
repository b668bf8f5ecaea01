"""The dry run's time to a verdict: seeds needed and projected hours recompute from the store's rows,
and each figure names its source (store, ``bench noise`` record, the task's declaration, FLOPs)."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from modtransfer.cli.commands import main
from modtransfer.reports.stats import seeds_needed
from modtransfer.run.noise_records import baseline_cell, cell_noise_key, write_noise
from modtransfer.run.plan import load_plan
from modtransfer.run.row import Row
from modtransfer.run.store import Store

BASE = [1.0, 1.2, 0.9, 1.1]
DIFFS = {"gelu": [0.1, 0.0, 0.2, 0.1], "rmsnorm": [0.05, -0.05, 0.0, 0.1]}
WALL = {"baseline": 500.0, "gelu": 700.0, "rmsnorm": 600.0}
MARGIN = 0.1


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODTRANSFER_CACHE", str(tmp_path / "cache"))  # no noise record from elsewhere


def write_plan(tmp_path: Path, file: str = "plan.yaml", **over: Any) -> Path:
    plan = {"name": "proj", "size": "tiny", "seeds": 4, "tasks": ["regression"], "variants": ["gelu", "rmsnorm"],
            "spec": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}, "margins": {"regression": MARGIN},
            "budget": {"steps": 6, "batch_size": 4, "eval_batches": 1}, "wandb": {"mode": "disabled"}}
    plan.update(over)
    path = tmp_path / file
    path.write_text(yaml.safe_dump(plan))
    return path


def record_rows(path: Path, runs: Path, variants: tuple[str, ...] = ("baseline", "gelu", "rmsnorm")) -> None:
    store = Store(runs / "proj" / "results.sqlite")
    for c in load_plan(str(path)).cells:
        if c.variant not in variants:
            continue
        value = BASE[c.seed] + (DIFFS[c.variant][c.seed] if c.variant != "baseline" else 0.0)
        env = {"stack": {"members": 4, "group_wall_s": 4 * WALL[c.variant]}} if c.variant == "gelu" else {}
        store.record(Row.for_cell(c, status="done", primary_metric="val_mse", primary_value=value, steps=6,
                                  wall_s=WALL[c.variant], env=env).to_dict())


def dry_run(path: Path, runs: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", str(path), "--runs-dir", str(runs), "--dry-run", "--workers", "1"]) == 0
    return capsys.readouterr().out


def task_block(out: str, task: str = "regression") -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("time to a verdict"))
    i = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {task}:"))
    return lines[i:i + 3]


def test_seeds_and_hours_recompute_from_the_stores_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, runs = write_plan(tmp_path), tmp_path / "runs"
    record_rows(path, runs)
    head, noise_line, time_line = task_block(dry_run(path, runs, capsys))
    sd = statistics.median(statistics.stdev(d) for d in DIFFS.values())
    need = seeds_needed(MARGIN, sd, 0.05, 0.8)
    assert need is not None and need > 4
    per_cell = statistics.fmean([WALL[v] for v in WALL for _ in BASE])
    left = 3 * need - 12  # 3 cells per seed, the 12 of seeds 0-3 done
    hours = left * per_cell / 1 / 3600
    assert head.startswith(f"  regression: {need} seeds at margin 0.1 val_mse (plan's margin): {left} cells left "
                           f"(3 per seed, 12 done) x {per_cell:.3g} s / 1 worker(s) = ")
    assert re.search(r"= ([0-9.]+) (h|min)$", head)
    shown = float(re.search(r"= ([0-9.]+) (h|min)$", head).group(1))
    assert shown == pytest.approx(hours if hours >= 1 else hours * 60, abs=0.051 if hours >= 1 else 0.51)
    assert f"paired-difference SD {sd:.3g} val_mse, measured in this store at the plan's budget" in noise_line
    assert "median over 2 variant(s)" in noise_line and f"baseline seed SD {statistics.stdev(BASE):.3g} over 4" in noise_line
    assert "mean wall_s of 12 cell(s) of this task, 4 of them stacked" in time_line


def test_the_sources_fall_back_in_order_and_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, runs = write_plan(tmp_path), tmp_path / "runs"
    # nothing measured: the task's declaration, for another budget than the plan's, and a FLOP estimate
    head, noise_line, time_line = task_block(dry_run(path, runs, capsys))
    assert "declared by the task for its default budget" in noise_line
    assert "the plan differs (steps 6 vs 400, batch_size 4 vs 16, eval_batches 1 vs 8)" in noise_line
    assert f"bench noise regression --plan {path}" in noise_line
    assert "estimated from the cell's FLOPs" in time_line
    # a bench noise record at another budget is not this plan's
    other_plan = write_plan(tmp_path, "other.yaml", budget={"steps": 7, "batch_size": 4, "eval_batches": 1})
    other = baseline_cell(load_plan(str(other_plan)), "regression")
    write_noise({"task": "regression", "key": cell_noise_key(other), "seeds": 8, "seed_sd": 0.3,
                 "paired_diff_sd": 0.2, "pairs": {"gelu": {}}, "seconds_per_cell": 9.0})
    assert "declared by the task" in task_block(dry_run(path, runs, capsys))[1]
    # a record at the plan's budget: its paired SD and its seconds per run
    base = baseline_cell(load_plan(str(path)), "regression")
    write_noise({"task": "regression", "key": cell_noise_key(base), "seeds": 8, "seed_sd": 0.3,
                 "paired_diff_sd": 0.2, "pairs": {"gelu": {}, "swish": {}}, "seconds_per_cell": 9.0,
                 "measured_at": "today"})
    head, noise_line, time_line = task_block(dry_run(path, runs, capsys))
    need = seeds_needed(MARGIN, 0.2, 0.05, 0.8)
    assert head.startswith(f"  regression: {need} seeds") and "x 9 s / 1 worker(s)" in head
    assert "SD 0.2 val_mse, measured by `bench noise` at the plan's budget (8 seeds, today" in noise_line
    assert "median SD of paired differences over 2 variant(s)" in noise_line
    assert "measured by `bench noise` at this budget" in time_line
    # baseline rows in the store win over the record; without 3 paired seeds, sqrt(2) x the seed SD
    record_rows(path, runs, variants=("baseline",))
    head, noise_line, time_line = task_block(dry_run(path, runs, capsys))
    sd = math.sqrt(2) * statistics.stdev(BASE)
    assert f"SD {sd:.3g} val_mse, measured in this store at the plan's budget: sqrt(2) x the baseline's seed SD" in noise_line
    assert f"{seeds_needed(MARGIN, sd, 0.05, 0.8)} seeds" in head
    assert "mean wall_s of 4 cell(s)" in time_line and "stacked" not in time_line
