"""What the per-cell diagnostics cost: ``modtransfer bench diagnostics [--tasks regression:200,lm:120,mt:60]``.

Inside one cell, diagnostic steps and ordinary steps alternate (``diag_every=2``), so both are
sampled under the same machine load; the always-on per-step gradient watch is timed directly.
With D and N the median diagnostic and ordinary step times and W the watch's median time, the
overhead at ``diag_every=k`` is ``((D - N) / k + W) / (N - W)`` of the step time without diagnostics.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch


def _timed_recorder(log: list[tuple[bool, float, float]]) -> Any:
    from modtransfer.run import diagnostics

    class Timed(diagnostics.Recorder):
        def begin(self, step: int) -> None:
            self._t0, self._diag, self._w = time.perf_counter(), self.due(step), 0.0
            super().begin(step)

        def after_backward(self, step: int) -> None:
            t = time.perf_counter()
            super().after_backward(step)
            self._w = time.perf_counter() - t

        def end(self) -> Any:
            out = super().end()
            log.append((self._diag, time.perf_counter() - self._t0, self._w))
            return out

    return Timed


def measure(task: str, steps: int) -> tuple[float, float, float]:
    """(ordinary step s, diagnostic step s, gradient watch s): medians over one cell, warm-up dropped."""
    from modtransfer.run import diagnostics
    from modtransfer.run.cell import run_cell
    from modtransfer.run.plan import load_plan

    log: list[tuple[bool, float, float]] = []
    with patch.object(diagnostics, "Recorder", _timed_recorder(log)):
        plan = load_plan({"name": "bench-diag", "size": "tiny", "seeds": [0], "variants": [], "tasks": [task],
                          "task_budget": {task: {"steps": steps, "diag_every": 2}}, "wandb": {"mode": "disabled"}})
        row = run_cell(plan.cells[0], Path(tempfile.mkdtemp()), wandb_cfg={"mode": "disabled"}, device="cpu")
    if row["status"] != "done":
        raise RuntimeError(f"{task}: the cell ended {row['status']}: {row['error']}")
    log = log[10:]
    ordinary = statistics.median(t for d, t, _ in log if not d)
    diag = statistics.median(t for d, t, _ in log if d)
    watch = statistics.median(w for d, _, w in log if not d)
    return ordinary, diag, watch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="modtransfer bench diagnostics", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="regression:200,lm:120,mt:60", help="task:steps,... (one cell each)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print("| task | ordinary step ms | diagnostic step ms | overhead at diag_every 10 | 25 | 50 | 100 |")
    print("|---|---|---|---|---|---|---|")
    for item in args.tasks.split(","):
        task, steps = item.split(":")
        n, d, w = measure(task, int(steps))
        over = [((d - n) / k + w) / (n - w) for k in (10, 25, 50, 100)]
        print(f"| {task} | {n * 1e3:.2f} | {d * 1e3:.2f} | " + " | ".join(f"{o:.1%}" for o in over) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
