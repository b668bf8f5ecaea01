"""Processes of a run: pool workers die with their parent, a killed cell's W&B run is resumed under its id.

Real ``python -m modtransfer run`` processes, killed with SIGKILL; tiny regression cells.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modtransfer.run.store import Store


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _plan(path: Path, name: str, *, steps: int, seeds: int, wandb: str, executor: str = "local",
          workers: int = 1) -> Path:
    plan = {"name": name, "size": "tiny", "seeds": seeds, "variants": ["gelu"], "tasks": ["regression"],
            "spec": {"d_model": 32, "n_layers": 1, "d_ff": 64},
            "task_budget": {"regression": {"steps": steps, "batch_size": 8}},
            "wandb": {"mode": wandb}, "executor": executor, "workers": workers}
    path.write_text(yaml.safe_dump(plan))
    return path


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pool_workers_end_when_the_run_is_killed(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "p.yaml", "orphans", steps=400, seeds=6, wandb="disabled", executor="processes",
                 workers=2)
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "modtransfer", "run", str(plan), "--runs-dir", str(runs),
                             "--no-report"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = _children(proc.pid)
        assert workers, "the pool never started"
        time.sleep(2.0)  # let them pick up cells
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.5)
        left = [p for p in workers if _alive(p)]
        assert not left, f"{len(left)} of {len(workers)} child processes outlived the killed run"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow  # about 30 s: run with -m slow
def test_killed_cell_resumes_its_wandb_run_under_the_same_id(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "p.yaml", "resume-wb", steps=1500, seeds=1, wandb="offline")
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "modtransfer", "run", str(plan), "--runs-dir", str(runs), "--no-report"]
    system_tmp = tmp_path / "system-tmp"   # stands for /tmp: nothing of the run may land there
    system_tmp.mkdir()
    env = {**_env(), "TMPDIR": str(system_tmp)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wb = runs / "resume-wb" / "wandb" / "wandb"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(wb.glob("offline-run-*")):
        time.sleep(0.3)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = {p.name.rsplit("-", 1)[1] for p in wb.glob("offline-run-*")}
    assert len(first) == 1, first
    # torch's own compile cache (torchinductor_<user>) is shared and persistent by design: not a leftover
    leftovers = [p for p in system_tmp.iterdir() if not p.name.startswith("torchinductor_")]
    assert leftovers == [], "a killed run left temporary folders in the system temp dir"
    stale = list((runs / "resume-wb" / "wandb" / ".tmp").iterdir())
    assert [p.name for p in stale] == [str(proc.pid)]  # its own, inside the run folder
    # the same plan again: the killed cell (same cell id) is trained again and logs to the same W&B run id
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert list((runs / "resume-wb" / "wandb" / ".tmp").iterdir()) == [], "stale and own temp folders are removed"
    assert [p for p in system_tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
    rows = Store(runs / "resume-wb" / "results.sqlite").rows()
    ids = {p.name.rsplit("-", 1)[1] for p in wb.glob("offline-run-*")}
    baseline = next(r for r in rows if r["variant"] == "baseline")
    assert first <= {r["cell_id"] for r in rows}, "the killed attempt's W&B run is named by its cell id"
    assert ids == {r["cell_id"] for r in rows}, "every attempt of a cell logs to that cell's W&B run id"
    assert baseline["status"] == "done"
