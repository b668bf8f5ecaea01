"""Issue 24: two ``modtransfer run`` of one plan on one run folder at the same time.

The hostile-input suite once saw the second run end in ``sqlite3.OperationalError: database is
locked`` (a traceback, exit 1). Both runs must end normally, without a traceback, and between
them train and record every cell exactly once: claims keep the second run off the cells the
first is training, and a lock met while both start (creating the store, switching it to WAL,
writing the plan) is waited for and retried.

A quick three-try version runs with the fast suite; the twenty-try version is ``slow``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modtransfer.run.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"name": "race", "size": "tiny", "seeds": 2, "variants": ["gelu"], "tasks": ["regression"],
        "spec": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32},
        "task_budget": {"regression": {"steps": 2, "batch_size": 4, "eval_batches": 1}},
        "wandb": {"mode": "disabled"}, "executor": "local"}
TRAINED = re.compile(r"^\[\d+/\d+\] (done|diverged|failed|timeout) ", re.M)


def _race(tmp_path: Path, tries: int) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    cells = {c.cell_id for c in load_plan(plan).cells}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for i in range(tries):
        runs = tmp_path / f"runs{i}"
        argv = [sys.executable, "-m", "modtransfer", "run", str(plan), "--runs-dir", str(runs), "--no-report"]
        procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outputs = [p.communicate(timeout=600) for p in procs]
        results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
        for code, _, err in results:
            assert "Traceback" not in err and "OperationalError" not in err, f"try {i}: {err}"
            assert code == 0, f"try {i}: exit {code}: {err}"
        trained = sum(len(TRAINED.findall(out)) for _, out, _ in results)
        assert trained == len(cells), f"try {i}: {trained} cells trained for {len(cells)}: {[r[1] for r in results]}"
        con = sqlite3.connect(runs / "race" / "results.sqlite")
        try:
            ids = [r[0] for r in con.execute("SELECT cell_id FROM cells")]
            claims = con.execute("SELECT count(*) FROM running").fetchone()[0]
        finally:
            con.close()
        assert sorted(ids) == sorted(cells), f"try {i}: every cell exactly once"
        assert claims == 0, f"try {i}: claims left behind"


def test_two_runs_of_one_plan_on_one_folder(tmp_path: Path) -> None:
    _race(tmp_path, 3)


@pytest.mark.slow
def test_two_runs_of_one_plan_on_one_folder_twenty_times(tmp_path: Path) -> None:
    _race(tmp_path, 20)
