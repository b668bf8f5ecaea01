"""Worker x thread layout: the automatic choice, its overrides, the layout line, the warm pool.

The choice is tested with the machine's figures given (cores, load, memory), so the rules are
checked rather than this machine. Pools train tiny regression cells; timings are never asserted.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.run.executors import EXECUTORS
from modtransfer.run.layout import LARGE_STEP_FLOPS, POOL_MIN_SECONDS, Layout, cell_cost, choose_layout
from modtransfer.run.plan import load_plan
from modtransfer.run.runner import RUNNERS, execute, resolve_layout
from modtransfer.run.store import Store
from modtransfer.run.workers import death_words

GiB = 2**30
SMOKE = Path(__file__).resolve().parent.parent / "configs" / "bench" / "smoke.yaml"
TINY = {"d_model": 32, "n_layers": 1, "d_ff": 64}


def plan_dict(name: str = "lay", *, size: str = "tiny", tasks: list[str] | None = None, seeds: Any = 1,
              variants: list[str] | None = None, steps: int = 20, spec: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    tasks = tasks or ["regression"]
    return {"name": name, "size": size, "seeds": seeds, "variants": variants or [], "tasks": tasks,
            **({"spec": spec} if spec else {}), "task_budget": {t: {"steps": steps, "batch_size": 16} for t in tasks},
            "wandb": {"mode": "disabled"}, **extra}


def smoke_cells(size: str = "tiny") -> list:
    """The smoke plan's regression and lm cells (at ``size``), one seed each."""
    return load_plan({**yaml.safe_load(SMOKE.read_text()), "size": size}, tasks="regression,lm", seeds=1).cells


def pick(cells: list, **kw: Any) -> Layout:
    return choose_layout(cells, **{"cores": 2, "load": 0.2, "memory": 64 * GiB, "env_threads": False, **kw})


# -- the automatic choice ------------------------------------------------------------------------
def test_tiny_cells_get_one_single_thread_worker_per_core() -> None:
    cells = smoke_cells()
    assert len(cells) == 10
    assert all(cell_cost(c).step_flops < LARGE_STEP_FLOPS for c in cells)
    for load in (0.2, 5.0):   # idle or busy: small cells never want a second thread
        layout = pick(cells, load=load)
        assert (layout.workers, layout.threads, layout.executor) == (2, 1, "processes"), layout
    assert "small cells" in pick(cells).reason
    assert (pick(cells, cores=16).workers, pick(cells, cores=16).threads) == (10, 1)  # no more workers than cells


def test_large_cells_get_threads_only_on_an_idle_machine() -> None:
    cells = smoke_cells("small")
    assert max(cell_cost(c).step_flops for c in cells) >= LARGE_STEP_FLOPS
    idle = pick(cells)
    assert (idle.workers, idle.threads, idle.executor) == (1, 2, "local"), idle
    assert "large cells" in idle.reason
    busy = pick(cells, load=3.0)
    assert (busy.workers, busy.threads) == (2, 1), busy
    assert "busy" in busy.reason
    wide = pick(cells, cores=16)
    assert (wide.workers, wide.threads) == (8, 2)
    one = pick(cells[:1], cores=8)   # spare cores go to the one large cell's threads
    assert (one.workers, one.threads) == (1, 8)


def test_too_little_work_or_memory_limits_the_workers() -> None:
    few = load_plan(plan_dict(seeds=2, steps=20)).cells
    assert sum(cell_cost(c).serial_seconds for c in few) < POOL_MIN_SECONDS
    layout = pick(few)
    assert (layout.workers, layout.threads) == (1, 1) and "too little" in layout.reason
    cells = smoke_cells()
    tight = pick(cells, cores=8, memory=int(1.6 * GiB))
    assert tight.workers == 2 and "memory for 2" in tight.reason
    assert pick([]).reason.endswith("no cells to train")


def test_overrides_win_and_oversubscription_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    cells = smoke_cells()
    assert (pick(cells, workers=1).workers, pick(cells, workers=1).threads) == (1, 1)
    assert (pick(cells, threads=2).workers, pick(cells, threads=2).threads) == (1, 2)
    crowded = pick(cells, workers=3)
    assert crowded.workers == 3 and "warning: 3 threads on 2 cores" in crowded.reason
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = choose_layout(cells, cores=2, load=0.0, memory=64 * GiB)
    assert (env.workers, env.threads) == (1, 2) and "OMP_NUM_THREADS=2" in env.reason
    assert choose_layout(cells, cores=2, load=0.0, memory=64 * GiB, threads=1).threads == 1  # a setting beats the env
    gpu = choose_layout(cells, cores=16, load=0.0, memory=64 * GiB, device="cuda", env_threads=False)
    assert gpu.workers == 1 and "cuda" in gpu.reason


def test_local_executor_is_one_worker() -> None:
    cells = smoke_cells()
    assert resolve_layout("local", cells, device="cpu").workers == 1
    with pytest.raises(ValueError, match="workers must be 1"):
        resolve_layout("local", cells, workers=2, device="cpu")
    with pytest.raises(ValueError, match="unknown executor 'slurm'"):
        resolve_layout("slurm", cells)


# -- plan fields and the command line --------------------------------------------------------------
def test_plan_fields_and_the_one_executor_registry() -> None:
    plan = load_plan(plan_dict(workers="auto", threads=2))
    assert (plan.executor, plan.workers, plan.threads) == ("auto", None, 2)
    assert plan.to_dict()["workers"] == "auto" and plan.to_dict()["threads"] == 2
    for bad, words in [({"threads": 0}, "plan.threads must be an integer >= 1 or auto"),
                       ({"workers": "many"}, "plan.workers must be an integer >= 1 or auto"),
                       ({"workers": True}, "plan.workers"),
                       ({"executor": "local", "workers": 2}, "local executor trains in one process")]:
        with pytest.raises(UserError, match=words):
            load_plan(plan_dict(**bad))
    with pytest.raises(UserError) as err:
        load_plan(plan_dict(executor="proceses"))
    assert all(name in str(err.value) for name in EXECUTORS) and "did you mean 'processes'" in str(err.value)
    parser = cli._parser()
    assert list(RUNNERS) == list(EXECUTORS), "every registered executor has a runner, and no other"
    for name in EXECUTORS:  # the command line accepts exactly the registry's names
        assert parser.parse_args(["run", "p.yaml", "--executor", name]).executor == name
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parser.parse_args(["run", "p.yaml", "--executor", "slurm"])


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_every_run_starts_with_its_layout_line(tmp_path: Path, restore_threads: None) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(yaml.safe_dump(plan_dict("line", steps=10, spec=TINY)))
    runs = str(tmp_path / "runs")
    code, out, err = _cli(["run", str(plan), "--runs-dir", runs, "--no-report", "--threads", "1"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("benchmark 'line': 1 cells to train")
    assert lines[1].startswith("executor auto -> local: 1 worker (this process) x 1 thread (threads set; small cells")
    code, out, _ = _cli(["run", str(plan), "--runs-dir", runs, "--dry-run", "--workers", "2", "--threads", "auto"])
    assert code == 0 and "executor auto -> processes: 2 worker processes x 1 thread (workers set" in out
    for argv, words in [(["--threads", "0"], "error: --threads must be an integer >= 1 or auto, got '0'"),
                        (["--workers", "two"], "error: --workers must be an integer >= 1 or auto, got 'two'"),
                        (["--executor", "local", "--workers", "2"], "error: --workers 2 needs --executor auto or "
                                                                     "processes")]:
        code, _, err = _cli(["run", str(plan), "--runs-dir", runs, "--dry-run", *argv])
        assert code == 2 and err.strip().startswith(words) and len(err.strip().splitlines()) == 1, err


@pytest.fixture
def restore_threads() -> Any:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# -- the warm pool --------------------------------------------------------------------------------
def test_workers_persist_and_results_do_not_depend_on_the_layout(tmp_path: Path, restore_threads: None) -> None:
    """Same threads: bit-identical, in this process or in workers. Other threads: float rounding only."""
    plan = load_plan(plan_dict("same", seeds=2, variants=["gelu"], steps=30, spec=TINY))
    torch.set_num_threads(3)
    runs = {name: execute(plan, tmp_path / name, plan.cells, device="cpu", **kw) for name, kw in [
        ("one", {"executor": "local", "threads": 1}), ("two", {"executor": "local", "threads": 2}),
        ("pool", {"executor": "processes", "workers": 2, "threads": 1})]}
    assert torch.get_num_threads() == 3, "the local executor restores the caller's thread count"
    assert {s["status"] for ss in runs.values() for s in ss} == {"done"} and len(runs["pool"]) == 4
    pids = Counter(s["pid"] for s in runs["pool"])
    assert os.getpid() not in pids and len(pids) <= 2
    assert max(pids.values()) >= 2, f"every cell in a fresh process: {pids}"
    rows = {name: {r["cell_id"]: r for r in Store(tmp_path / name / "results.sqlite").rows()} for name in runs}
    for cid, r in rows["pool"].items():
        one, two = rows["one"][cid], rows["two"][cid]
        assert (one["env"]["threads"], two["env"]["threads"], r["env"]["threads"]) == (1, 2, 1)
        assert r["primary_value"] == one["primary_value"] and r["curve"] == one["curve"]
        assert math.isclose(r["primary_value"], two["primary_value"], rel_tol=1e-4), (r, two)
    print("cells per worker:", dict(pids), "record_s:", [round(s["record_s"], 4) for s in runs["pool"]])


KILLER = '''
"""A variant whose FFN kills its worker process at the first training step (SIGKILL)."""
import multiprocessing
import os
import signal

from torch import nn

from modtransfer import ModelSpec, register_component, register_variant


@register_component("ffn", "kill_worker")
class KillFFN(nn.Module):
    """A dense FFN that kills the worker process training it (never the test process)."""

    def __init__(self, spec: ModelSpec, activation, layer_index: int = 0) -> None:
        super().__init__()
        self.w1, self.w2, self.act = nn.Linear(spec.d_model, spec.d_ff), nn.Linear(spec.d_ff, spec.d_model), activation

    def forward(self, x):
        if not x.is_meta:
            if multiprocessing.current_process().name != "modtransfer-worker":
                raise RuntimeError("kill_worker trains only in a worker process")
            os.kill(os.getpid(), signal.SIGKILL)
        return self.w2(self.act(self.w1(x)))


@register_variant("kill_worker", slot="ffn")
def kill_worker(spec: ModelSpec) -> ModelSpec:
    """Kills its worker (tests the pool's crash path)."""
    return spec.replace(ffn="kill_worker")
'''


def test_a_dead_worker_fails_its_cell_and_the_rest_goes_on(tmp_path: Path,
                                                           temporary_plugin: Callable[[str | Path], str | None]) -> None:
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    assert temporary_plugin(plugin)
    plan = load_plan(plan_dict("crash", seeds=[0], variants=["kill_worker", "gelu"], steps=20, spec=TINY))
    assert [c.variant for c in plan.cells] == ["baseline", "kill_worker", "gelu"]  # one worker: gelu comes after
    run_dir = tmp_path / "run"
    summaries = execute(plan, run_dir, plan.cells, executor="processes", workers=1, threads=1, device="cpu",
                        plugins=[str(plugin)])
    assert [s["label"] for s in summaries] == [c.label for c in plan.cells]
    store = Store(run_dir / "results.sqlite")
    rows = {r["variant"]: r for r in store.rows()}
    assert len(rows) == 3 and store.running() == []
    assert rows["baseline"]["status"] == rows["gelu"]["status"] == "done"
    dead = rows["kill_worker"]
    assert dead["status"] == "failed" and dead["primary_value"] is None
    assert "died while training this cell, killed by SIGKILL" in dead["error"] and "--retry-failed" in dead["error"]
    assert [s["status"] for s in summaries if s.get("crashed")] == ["failed"]
    assert len({s["pid"] for s in summaries}) == 2  # a fresh worker took over
    assert death_words(-9).startswith("killed by SIGKILL") and death_words(3) == "exit code 3"


@pytest.mark.slow
def test_workers_that_cannot_start_stop_the_run(tmp_path: Path) -> None:
    plugin = tmp_path / "dies.py"
    plugin.write_text("import multiprocessing, os\n"
                      "if multiprocessing.current_process().name == 'modtransfer-worker':\n    os._exit(3)\n")
    plan = load_plan(plan_dict("nostart", seeds=2, steps=10, spec=TINY))
    with pytest.raises(RuntimeError, match="3 worker processes in a row died while starting \\(exit code 3\\)"):
        execute(plan, tmp_path / "run", plan.cells, executor="processes", workers=1, threads=1, device="cpu",
                plugins=[str(plugin)])
    assert Store(tmp_path / "run" / "results.sqlite").rows() == []  # nothing is blamed on a cell


# -- bench runner: the sameness rule --------------------------------------------------------------
def test_bench_runner_calls_results_the_same_only_within_a_percent_of_seed_noise() -> None:
    from modtransfer.bench.layout_speed import main, same_results

    def run(*cells: tuple[str, str, str, float | None]) -> dict[str, Any]:
        return {"rows": [{"cell_id": cid, "task": task, "status": status, "primary_value": value}
                         for cid, task, status, value in cells]}

    base = run(("a", "regression", "done", 1.0), ("b", "lm", "done", 2.0))
    close = run(("a", "regression", "done", 1.0 + 0.005 * 0.04), ("b", "lm", "done", 2.0))
    far = run(("a", "regression", "done", 1.0 + 0.05 * 0.04), ("b", "lm", "done", 2.0))
    flipped = run(("a", "regression", "diverged", None), ("b", "lm", "done", 2.0))
    same = same_results([base, close])
    assert same["same"] and same["exact"] == 1 and same["cells"] == 2
    assert math.isclose(same["noise"], 0.005, rel_tol=1e-6) and math.isclose(same["rel"], 0.0002, rel_tol=1e-6)
    assert not same_results([base, far])["same"]
    assert same_results([base, flipped])["status_differs"] == 1 and not same_results([base, flipped])["same"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["--rounds", "0"]) == 2
    assert err.getvalue().strip() == "error: --rounds must be >= 1, got 0"
