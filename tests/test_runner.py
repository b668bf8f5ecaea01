"""The benchmark runner: resume after kill -9, concurrent writers, failure statuses, executors.

All plans train tiny regression cells (no data to fetch). Runs that must survive a
``SIGKILL`` or race each other are real ``python -m modtransfer run`` processes; the rest
call the CLI in-process. Timings are printed, never asserted.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.components import COMPONENTS
from modtransfer.core.task import TASKS
from modtransfer.core.variant import VARIANTS
from modtransfer.run.plan import load_plan
from modtransfer.run.runner import execute
from modtransfer.run.store import Store

RAISING_PLUGIN = Path(__file__).parent / "plugins" / "raising_plugin.py"
RAISING_MESSAGE = "raising_plugin: deliberate failure inside forward"
SPEC = {"d_model": 32, "n_layers": 1, "d_ff": 64}
PROGRESS = re.compile(r"^\[\d+/\d+\] (\w+)\s+(\S+)", re.M)


def tiny_plan(name: str, *, steps: int = 20, seeds: int | list[int] = 1, variants: list[str] | None = None,
              wandb: str = "disabled", **extra: Any) -> dict[str, Any]:
    """A plan of tiny regression cells (baseline + ``variants``) x seeds."""
    return {
        "name": name, "size": "tiny", "seeds": seeds, "variants": variants or [], "tasks": ["regression"],
        "spec": dict(SPEC), "task_budget": {"regression": {"steps": steps, "batch_size": 8}},
        "wandb": {"mode": wandb}, **extra,
    }


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    """One compute thread per process: 2 shared cores, several processes racing."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


_STARTED: list[subprocess.Popen[bytes]] = []


def start_run(plan: Path, runs: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "modtransfer", "run", str(plan), "--runs-dir", str(runs), "--no-report", *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(),
                                start_new_session=True)
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _reap_runs() -> Iterator[None]:
    """A failing test must not leave its ``modtransfer run`` processes (or their workers) behind."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the run and any pool workers
        proc.wait(timeout=30)


def finished(store: Store) -> dict[str, float]:
    """cell_id -> finished_at of every row in the store."""
    return {r["cell_id"]: r["finished_at"] for r in store.rows()}


def row_count(store: Store) -> int:
    if not store.exists():
        return 0
    with store.connect() as con:
        return int(con.execute("SELECT COUNT(*) FROM cells").fetchone()[0])


def assert_one_row_per_cell(store: Store, plan_ids: list[str]) -> list[dict[str, Any]]:
    with store.connect() as con:
        ids = [r[0] for r in con.execute("SELECT cell_id FROM cells")]
    assert len(ids) == len(set(ids)), "a cell was recorded twice"
    assert sorted(ids) == sorted(plan_ids)
    return store.rows()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """In-process training on one thread (as the subprocesses), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_stale_plugin_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modtransfer.core.plugins.PROBLEMS", [])


@contextlib.contextmanager
def plugin_scope() -> Iterator[None]:
    """Whatever plugins register inside is unregistered (and their modules forgotten) on exit."""
    comps = {slot: set(reg.names()) for slot, reg in COMPONENTS.items()}
    variants, tasks, modules = set(VARIANTS.names()), set(TASKS.names()), set(sys.modules)
    try:
        yield
    finally:
        for slot, reg in COMPONENTS.items():
            for name in set(reg.names()) - comps[slot]:
                reg.unregister(name)
        for name in set(VARIANTS.names()) - variants:
            VARIANTS.unregister(name)
        for name in set(TASKS.names()) - tasks:
            TASKS.unregister(name)
        for name in set(sys.modules) - modules:
            if name.startswith("modtransfer_plugin_"):
                sys.modules.pop(name, None)


def cli_run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# -- resume after kill -9 ---------------------------------------------------------------------
def test_resume_after_sigkill_at_random_moments(tmp_path: Path) -> None:
    """SIGKILL ``modtransfer run`` at seeded random moments, then finish: one row per cell,
    all done, and cells recorded before a kill are never trained again."""
    rng = random.Random(20240607)
    plan_path = write_plan(tmp_path / "resume.yaml", tiny_plan("resume", steps=60, seeds=4, variants=["gelu"]))
    plan_ids = [c.cell_id for c in load_plan(plan_path).cells]
    runs, log = tmp_path / "runs", tmp_path / "run.log"
    store = Store(runs / "resume" / "results.sqlite")
    kept: dict[str, float] = {}
    kills = 0
    for round_ in range(3):
        before = row_count(store)
        proc = start_run(plan_path, runs, log=log)
        started = time.monotonic()
        if round_ == 0:  # anywhere from interpreter start-up to the first cells
            time.sleep(rng.uniform(0.5, 6.0))
        else:            # after at least one more cell, at a random point of the following ones
            while proc.poll() is None and row_count(store) <= before and time.monotonic() - started < 180:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        now = finished(store)
        for cid, at in kept.items():
            assert now.get(cid) == at, f"cell {cid} was re-recorded after a kill"
        kept = now
        print(f"round {round_}: {'killed' if proc.returncode == -signal.SIGKILL else 'exited'} "
              f"after {time.monotonic() - started:.1f} s with {len(now)} of {len(plan_ids)} cells recorded")
        if len(now) == len(plan_ids):
            break
    assert kills >= 2, "the kills all came too late to interrupt anything; the test proved nothing"

    final_log = tmp_path / "final.log"
    proc = start_run(plan_path, runs, log=final_log)
    assert proc.wait(timeout=300) == 0, final_log.read_text()
    text = final_log.read_text()
    assert f"{len(plan_ids) - len(kept)} cells to train ({len(kept)} already done)" in text
    trained = {label for status, label in PROGRESS.findall(text)}
    assert len(trained) == len(plan_ids) - len(kept)

    rows = assert_one_row_per_cell(store, plan_ids)
    assert {r["status"] for r in rows} == {"done"}
    for r in rows:
        if r["cell_id"] in kept:
            assert r["finished_at"] == kept[r["cell_id"]], "a cell finished before a kill was trained again"
    assert store.running() == []
    # start-up per cell: recorded for every cell, never longer than the cell (values printed only)
    for r in rows:
        assert r["startup_s"] is not None and 0 <= r["startup_s"] <= r["wall_s"]
    print("startup_s in finishing order:", ", ".join(f"{r['startup_s']:.2f}" for r in rows))


# -- concurrent writers -----------------------------------------------------------------------
def test_concurrent_runs_never_train_a_cell_twice(tmp_path: Path) -> None:
    """A local run and a processes run (2 workers) on one plan and run folder at the same time."""
    plan_path = write_plan(tmp_path / "race.yaml", tiny_plan("race", steps=40, seeds=2, variants=["gelu", "rmsnorm"]))
    plan_ids = [c.cell_id for c in load_plan(plan_path).cells]
    runs = tmp_path / "runs"
    logs = [tmp_path / "local.log", tmp_path / "processes.log"]
    procs = [start_run(plan_path, runs, "--executor", "local", log=logs[0]),
             start_run(plan_path, runs, "--executor", "processes", "--workers", "2", log=logs[1])]
    codes = [p.wait(timeout=400) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts

    trained: list[str] = []
    for text in texts:
        for status, label in PROGRESS.findall(text):
            if status != "skipped":
                trained.append(label)
    print("trained by local:", len([1 for s, _ in PROGRESS.findall(texts[0]) if s != "skipped"]),
          "by processes:", len([1 for s, _ in PROGRESS.findall(texts[1]) if s != "skipped"]))
    assert len(trained) == len(set(trained)) == len(plan_ids), f"cells trained {trained}"

    rows = assert_one_row_per_cell(Store(runs / "race" / "results.sqlite"), plan_ids)
    assert {r["status"] for r in rows} == {"done"}


# -- statuses: diverged, failed (raising plugin), and the status / dry-run views ---------------
@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A run of baseline and the raising plugin at lr 1e-3 and an absurd lr 100 (4 of 6 cells).

    The plan file also lists ``gelu``; the run selects ``--variants raise_in_forward`` so the
    two gelu cells are left for ``status`` and ``--dry-run`` to report. W&B runs offline here
    (the other runs disable it to save time).
    """
    tmp = tmp_path_factory.mktemp("mixed")
    plan = tiny_plan("mixed", steps=30, seeds=[0], variants=["gelu", "raise_in_forward"], wandb="offline",
                     hparams={"lr": [0.001, 100.0]}, budget={"diverge_factor": 4.0})
    plan_path = write_plan(tmp / "mixed.yaml", plan)
    runs = tmp / "runs"
    saved_environ = dict(os.environ)
    with plugin_scope():
        # --no-check: this plugin fails the contract on purpose, to show how a failing cell is recorded
        code, out, err = cli_run(["run", str(plan_path), "--runs-dir", str(runs), "--plugin", str(RAISING_PLUGIN),
                                  "--variants", "raise_in_forward", "--no-report", "--no-check"])
        yield {"code": code, "out": out, "err": err, "plan": plan_path, "runs": runs, "run_dir": runs / "mixed",
               "store": Store(runs / "mixed" / "results.sqlite")}
    os.environ.clear()
    os.environ.update(saved_environ)


def _row(rows: list[dict[str, Any]], variant: str, lr: float) -> dict[str, Any]:
    (row,) = [r for r in rows if r["variant"] == variant and r["hparams"] == {"lr": lr}]
    return row


def test_divergence_is_recorded_and_the_rest_finishes(mixed_run: dict[str, Any]) -> None:
    assert mixed_run["code"] == 1, mixed_run["err"]  # two cells failed (the raising plugin): exit 1, with why
    assert "2 cell(s) failed" in mixed_run["err"] and RAISING_MESSAGE in mixed_run["err"]
    rows = mixed_run["store"].rows()
    assert len(rows) == 4
    bad = _row(rows, "baseline", 100.0)
    assert bad["status"] == "diverged"
    assert isinstance(bad["failed_step"], int) and 0 <= bad["failed_step"] <= 30
    assert bad["steps"] < 30, "training should stop at the divergence, not run to the end"
    assert "initial value" in bad["error"]
    good = _row(rows, "baseline", 0.001)
    assert good["status"] == "done" and good["failed_step"] is None
    assert good["steps"] == 30 and math.isfinite(good["primary_value"])
    # the diverged cell ran before the last cells, which still finished
    order = [r["cell_id"] for r in rows]
    assert order.index(bad["cell_id"]) < len(order) - 1


def test_raising_plugin_cell_fails_with_traceback(mixed_run: dict[str, Any]) -> None:
    assert mixed_run["code"] == 1, mixed_run["err"]
    rows = mixed_run["store"].rows()
    failed = [r for r in rows if r["variant"] == "raise_in_forward"]
    assert len(failed) == 2
    for r in failed:
        assert r["status"] == "failed"
        assert r["primary_value"] is None
        assert r["error"].startswith(f"RuntimeError: {RAISING_MESSAGE}")
        assert "Traceback (most recent call last)" in r["error"]
        assert "raising_plugin.py" in r["error"], "the traceback should reach the plugin's forward"
        assert "[ffn 'raise_in_forward' (plugin " in r["error"].splitlines()[0]   # located on the first line
        assert r["env"]["contract_gate"] == "skipped"   # the row says the gate was skipped
    assert "failed   regression/raise_in_forward/0" in mixed_run["out"]
    assert [r["status"] for r in rows if r["variant"] == "baseline"].count("done") == 1


def test_wandb_offline_runs_stay_in_the_run_folder(mixed_run: dict[str, Any]) -> None:
    rows = mixed_run["store"].rows()
    run_dir: Path = mixed_run["run_dir"]
    for r in rows:
        assert r["wandb_dir"], f"{r['variant']} {r['hparams']} has no W&B folder"
        assert (run_dir / r["wandb_dir"]).is_dir()
        assert (run_dir / r["wandb_dir"]).resolve().is_relative_to(run_dir.resolve())
    assert len(list((run_dir / "wandb" / "wandb").glob("offline-run-*"))) == len(rows)


def test_status_counts(mixed_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    with plugin_scope():
        assert cli.main(["--plugin", str(RAISING_PLUGIN), "status", str(mixed_run["run_dir"])]) == 0
    out = capsys.readouterr().out
    assert "done 1, diverged 1, failed 2, timeout 0, running 0, left 0 of 4" in out
    assert re.search(r"diverged\s+regression/baseline/0 at step \d+", out)
    assert f"failed   regression/raise_in_forward/0: RuntimeError: {RAISING_MESSAGE}" in out
    assert "estimated time left" not in out  # the narrowed plan has nothing left


def test_status_counts_in_a_fresh_process_with_a_plugin_plan(mixed_run: dict[str, Any]) -> None:
    proc = subprocess.run([sys.executable, "-m", "modtransfer", "--plugin", str(RAISING_PLUGIN), "status",
                           str(mixed_run["run_dir"])], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "left 0 of 4" in proc.stdout  # the plugin is remembered by the store; the plan as narrowed


def test_dry_run_lists_done_and_todo_with_an_estimate(mixed_run: dict[str, Any]) -> None:
    store: Store = mixed_run["store"]
    before = finished(store)
    with plugin_scope():
        code, out, err = cli_run(["run", str(mixed_run["plan"]), "--runs-dir", str(mixed_run["runs"]),
                                  "--plugin", str(RAISING_PLUGIN), "--dry-run"])
    assert code == 0, err
    marks = re.findall(r"^\s+(done|todo)\s+([0-9a-f]{20})\s+(\S+)", out, re.M)
    assert len(marks) == 6
    assert {cid for mark, cid, _ in marks if mark == "done"} == set(before)
    assert sorted(label for mark, _, label in marks if mark == "todo") == [
        "regression/gelu/0[lr=0.001]", "regression/gelu/0[lr=100.0]"]
    m = re.search(r"2 to train, 4 already done, 0 skipped; estimated (\d+) s of training left", out)
    assert m, out
    assert finished(store) == before, "a dry run must not write"


# -- wall-clock budget -------------------------------------------------------------------------
@pytest.fixture
def restore_environ() -> Iterator[None]:
    """W&B settings go into ``os.environ`` of the training process; undo that after the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


WANDB_MODES = [
    pytest.param("disabled", id="wandb-disabled"),
    pytest.param("offline", id="wandb-offline"),
]


@pytest.mark.parametrize("wandb", WANDB_MODES)
def test_wall_clock_budget_gives_timeout(tmp_path: Path, restore_environ: None, wandb: str) -> None:
    plan_path = write_plan(tmp_path / "clock.yaml", tiny_plan("clock", steps=200, wandb=wandb,
                                                               budget={"max_seconds": 0.001}))
    code, out, err = cli_run(["run", str(plan_path), "--runs-dir", str(tmp_path / "runs"), "--no-report"])
    assert code == 1 and "1 cell(s) timeout" in err, err  # a timed-out cell makes the run exit 1
    (row,) = Store(tmp_path / "runs" / "clock" / "results.sqlite").rows()
    assert row["status"] == "timeout", row["error"]
    assert row["failed_step"] == 1 and row["steps"] == 1
    assert "wall-clock budget" in row["error"]
    assert row["primary_value"] is not None, "a timed-out cell is still evaluated"


# -- Ray ---------------------------------------------------------------------------------------
@pytest.mark.slow  # about 30 s: run with -m slow
def test_ray_executor_matches_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    plan = load_plan(tiny_plan("ray", steps=20, seeds=[0, 1], variants=["gelu", "rmsnorm"]))
    assert len(plan.cells) == 6   # 3 groups of 2 seeds: each a stacked model in one Ray task
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    execute(plan, local_dir, plan.cells, executor="local", device="cpu")
    seen: list[dict[str, Any]] = []
    started = time.perf_counter()
    summaries = execute(plan, ray_dir, plan.cells, executor="ray", workers=2, device="cpu", on_result=seen.append)
    print(f"ray executor: {time.perf_counter() - started:.1f} s for {len(plan.cells)} cells (cluster start included)")
    assert summaries == seen
    assert sorted(s["cell_id"] for s in seen) == sorted(c.cell_id for c in plan.cells)
    assert {s["status"] for s in seen} == {"done"}

    ids = [c.cell_id for c in plan.cells]
    local = {r["cell_id"]: r for r in assert_one_row_per_cell(Store(local_dir / "results.sqlite"), ids)}
    remote = {r["cell_id"]: r for r in assert_one_row_per_cell(Store(ray_dir / "results.sqlite"), ids)}
    for cid in ids:
        assert remote[cid]["status"] == local[cid]["status"] == "done"
        assert remote[cid]["primary_value"] == pytest.approx(local[cid]["primary_value"], rel=1e-4)
        assert remote[cid]["env"]["threads"] == 1
        assert remote[cid]["env"]["stack"]["members"] == local[cid]["env"]["stack"]["members"] == 2
    assert Store(ray_dir / "results.sqlite").running() == []

    import ray

    assert not ray.is_initialized(), "the executor must shut down the cluster it started"


def test_stored_rows_have_exactly_the_row_fields(mixed_run: dict[str, Any]) -> None:
    """The store's columns are Row's (its one schema); every stored cell, trained or failed, fills them all."""
    from modtransfer.run.row import COLUMNS, JSON_COLUMNS, Row

    rows = mixed_run["store"].rows()
    assert rows and all(set(r) == set(COLUMNS) for r in rows)
    assert all(isinstance(r[c], dict | list) for r in rows for c in JSON_COLUMNS)
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["finished_at"] > 0 and Row(**failed).to_dict() == {**failed, "diagnostics": [], "events": []}


def test_planning_and_executing_do_not_import_lightning() -> None:
    """Loading a plan and choosing a layout stay light: Lightning comes with the first cell that trains."""
    code = ("import sys; from modtransfer.run.plan import load_plan; from modtransfer.run.runner import resolve_layout; "
            "p = load_plan({'name': 'x', 'tasks': ['regression'], 'variants': ['gelu'], 'seeds': 1}); "
            "resolve_layout('auto', p.cells, device='cpu'); "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'wandb') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
