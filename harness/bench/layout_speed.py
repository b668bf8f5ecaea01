"""Cells per hour of a plan: the old layout (one process, torch's default threads) against the new one (auto).

    modtransfer bench runner [--plan configs/bench/smoke.yaml] [--tasks regression,lm] [--rounds 1]
                             [--old "--executor local --threads N"] [--new "--executor auto"]

Each layout runs the plan's selected cells as a real ``modtransfer run`` process into a fresh
run folder, so each pays what a run pays: interpreter start, imports, worker start-up, W&B
(the plan's mode), evaluation and the store's transactions. Rounds alternate the order (old
then new, new then old, ...) so a drift in machine load falls on both. Both processes start
without ``OMP_NUM_THREADS``, so the old layout gets torch's default threads (one per core) and
the new one chooses its own. Printed per layout: wall time, cells per hour, the layout line
the run printed, and per cell (medians) the start-up before the first step (model, Trainer,
W&B), the training loop, and what comes after it (final evaluation, W&B finish); then the
store's transaction time (the run's rows written again into a scratch store), the ratio of
cells per hour, and whether every cell gave the same result under both layouts (same seeds,
so only float rounding may differ). A measurement to quote; the exit code is 1 when a run
failed or a cell's result differs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from modtransfer.run.layout import load_average, machine_cores

#: largest change of a cell's primary value between layouts, as a fraction of its task's seed SD
SAME_RESULT_NOISE = 0.01
#: the same, relative to the value, for a task that declares no seed SD
SAME_RESULT_RTOL = 1e-4


def run_once(plan: str, run_args: list[str], runs_dir: Path, timeout: float) -> dict[str, Any]:
    """One ``modtransfer run`` of ``plan`` with ``run_args``; its wall time, layout line and rows."""
    from modtransfer.run.store import Store

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "modtransfer", "run", plan, "--runs-dir", str(runs_dir), "--no-report", *run_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    layout = next((line for line in proc.stdout.splitlines() if line.startswith("executor ")), "(no layout line)")
    stores = list(runs_dir.glob("*/results.sqlite"))
    rows = Store(stores[0]).rows() if stores else []
    return {"wall_s": wall, "rows": rows, "layout": layout, "code": proc.returncode,
            "tail": (proc.stderr.strip().splitlines() or [""])[-1]}


def record_seconds(rows: list[dict[str, Any]], folder: Path) -> float:
    """Median seconds of one store transaction: ``rows`` written again into a scratch store."""
    from modtransfer.run.store import Store

    store = Store(folder / "results.sqlite")
    times = []
    for row in rows:
        started = time.perf_counter()
        store.record({k: v for k, v in row.items() if k != "finished_at"})
        times.append(time.perf_counter() - started)
    return statistics.median(times) if times else float("nan")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and per-cell medians over one layout's runs."""
    rows = [r for run in runs for r in run["rows"]]
    wall = sum(run["wall_s"] for run in runs)

    def med(values: list[float | None]) -> float:
        vals = [v for v in values if v is not None]
        return statistics.median(vals) if vals else float("nan")

    after = [r["wall_s"] - (r["startup_s"] or 0) - (r["train_s"] or 0) for r in rows if r["wall_s"] is not None]
    return {"cells": len(rows), "wall_s": wall, "cells_per_hour": 3600 * len(rows) / wall if wall else 0.0,
            "startup_s": med([r["startup_s"] for r in rows]), "train_s": med([r["train_s"] for r in rows]),
            "after_s": med(after), "statuses": sorted({r["status"] for r in rows}),
            "layout": runs[0]["layout"] if runs else "", "codes": sorted({run["code"] for run in runs})}


def same_results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far each cell's primary value moved between runs, relative and in its task's seed SDs.

    Cells are the same when no status differs and every value moved by at most
    :data:`SAME_RESULT_NOISE` of the task's declared seed-to-seed SD (``noise_sd``; without one,
    by at most :data:`SAME_RESULT_RTOL` relative): thread counts change the rounding of parallel
    reductions, which training carries on, but far below what a seed changes.
    """
    import modtransfer.tasks  # noqa: F401  (registers the built-in tasks)
    from modtransfer.core.task import TASKS

    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for r in run["rows"]:
            by.setdefault(r["cell_id"], []).append(r)
    out = {"cells": len(by), "rel": 0.0, "noise": 0.0, "exact": 0, "status_differs": 0, "same": True}
    for rs in by.values():
        if len({r["status"] for r in rs}) > 1:
            out["status_differs"] += 1
            out["same"] = False
            continue
        vals = [r["primary_value"] for r in rs if r["primary_value"] is not None]
        if len(vals) < 2:
            continue
        delta = max(vals) - min(vals)
        rel = delta / max(abs(min(vals)), 1e-12)
        sd = getattr(TASKS.get(rs[0]["task"]), "noise_sd", 0.0) if rs[0]["task"] in TASKS else 0.0
        out["exact"] += delta == 0
        out["rel"] = max(out["rel"], rel)
        if sd:
            out["noise"] = max(out["noise"], delta / sd)
        if (delta > SAME_RESULT_NOISE * sd) if sd else (rel > SAME_RESULT_RTOL):
            out["same"] = False
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modtransfer bench runner", description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", default="configs/bench/smoke.yaml", help="plan YAML (default: the smoke plan)")
    p.add_argument("--tasks", default="regression,lm", help="tasks of the plan to run (default: regression,lm)")
    p.add_argument("--rounds", type=int, default=1, help="old/new pairs, order alternating (default 1)")
    p.add_argument("--old", default=None, help="run options of the old layout (default: --executor local "
                   "--threads <cores>, torch's default without OMP_NUM_THREADS)")
    p.add_argument("--new", default="--executor auto", help="run options of the new layout (default: auto)")
    p.add_argument("--wandb", choices=["offline", "disabled"], help="W&B mode (default: the plan's)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds one run may take (default 7200)")
    p.add_argument("--keep", metavar="DIR", help="keep the run folders in DIR (default: a temporary folder)")
    return p


def _report(name: str, s: dict[str, Any], stream: Any) -> None:
    print(f"{name}: {s['layout']}", file=stream)
    print(f"  {s['cells']} cells {'/'.join(s['statuses'])} in {s['wall_s']:.1f} s = {s['cells_per_hour']:.0f} cells/h; "
          f"per cell (median): start-up {s['startup_s']:.2f} s, training {s['train_s']:.2f} s, after training "
          f"(final evaluation, W&B finish) {s['after_s']:.2f} s", file=stream, flush=True)


def _problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, in one line, or None."""
    if args.rounds < 1:
        return f"--rounds must be >= 1, got {args.rounds}"
    if not Path(args.plan).is_file():
        return f"plan file {args.plan!r} not found; pass --plan PATH (e.g. configs/bench/smoke.yaml)"
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        return f"--keep {args.keep} is not empty; pass a new folder"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cores = machine_cores()
    layouts = {"old": shlex.split(args.old or f"--executor local --threads {cores}"), "new": shlex.split(args.new)}
    extra = ["--tasks", args.tasks] + (["--wandb", args.wandb] if args.wandb else [])
    print(f"bench runner: {args.plan} ({args.tasks}), {args.rounds} round(s), {cores} cores, "
          f"load average {load_average():.1f} at start", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as scratch:
        tmp = args.keep or scratch
        for r in range(args.rounds):
            for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                result = run_once(args.plan, layouts[name] + extra, Path(tmp) / f"{name}-{r}", args.timeout)
                runs[name].append(result)
                print(f"round {r + 1} {name}: {len(result['rows'])} cells in {result['wall_s']:.1f} s "
                      f"(exit {result['code']}{'; ' + result['tail'] if result['code'] else ''}; load average "
                      f"{load_average():.1f})", flush=True)
        store_s = record_seconds(runs["new"][0]["rows"], Path(scratch) / "store")
    old, new = summarise(runs["old"]), summarise(runs["new"])
    _report("old", old, sys.stdout)
    _report("new", new, sys.stdout)
    same = same_results(runs["old"] + runs["new"])
    print(f"store transaction (one row): {1000 * store_s:.1f} ms (median)")
    print(f"results: {same['cells']} cells, {'the same' if same['same'] else 'DIFFERENT'} across layouts: "
          f"{same['exact']} bit-identical, largest change {same['rel']:.1e} relative = {100 * same['noise']:.2f}% of "
          f"the task's seed-to-seed SD (limit {100 * SAME_RESULT_NOISE:g}%)"
          + (f"; status differs in {same['status_differs']}" if same["status_differs"] else ""))
    ratio = new["cells_per_hour"] / old["cells_per_hour"] if old["cells_per_hour"] else float("nan")
    print(f"cells per hour, new / old: {ratio:.2f}x ({new['cells_per_hour']:.0f} vs {old['cells_per_hour']:.0f})")
    return 0 if same["same"] and not any(new["codes"] + old["codes"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
