"""A group of cells that differ only by seed: trained as one stacked model, or one at a time.

:func:`run_cells` yields one store row per cell as each is finished, so a caller records every
finished row before the next is trained. A group of one, a group whose model fails the stacked
probe (:func:`modtransfer.run.stacked.probe`: a component ``vmap`` cannot batch), trains one seed at a
time through :func:`modtransfer.run.cell.run_cell`, and its rows say why in ``env['stack']``.
Each stacked member's row is the row a one-seed run of that cell would have (same cell id,
status, curve, metrics), with ``env['stack'] = {'members': K, 'member': k, 'group_wall_s': S}``
and ``wall_s``/``train_s`` its share (``S / K``) of the group's time.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.run import cell as _cell
from modtransfer.run.cell import CellRun, fit_cell, run_cell
from modtransfer.run.plan_types import Cell
from modtransfer.run.row import sanitise_row
from modtransfer.run.training import make_trainer

if TYPE_CHECKING:
    from modtransfer.core.spec import ModelSpec
    from modtransfer.core.task import Task


class _Fallback(Exception):
    """The group's model cannot run stacked; its cells train one at a time."""


def _wandb_defaults(wandb_cfg: dict[str, Any] | None) -> dict[str, Any]:
    return {"mode": "offline", "project": "modtransfer", "entity": None, **(wandb_cfg or {})}


def run_cells(cells: list[Cell], run_dir: Path, *, wandb_cfg: dict[str, Any] | None = None,
              cache_dir: Path | None = None, device: str = "auto") -> Iterator[dict[str, Any]]:
    """Train ``cells`` (one group: equal but for the seed) and yield each one's row as it is finished."""
    cfg = _wandb_defaults(wandb_cfg)
    if len(cells) == 1:
        yield run_cell(cells[0], run_dir, wandb_cfg=cfg, cache_dir=cache_dir, device=device)
        return
    group = _StackedGroup(cells, Path(run_dir), cfg, cache_dir, device)
    try:
        rows = group.train()
    except KeyboardInterrupt:
        raise
    except _Fallback as fb:
        for cell in cells:
            row = run_cell(cell, run_dir, wandb_cfg=cfg, cache_dir=cache_dir, device=device)
            row["env"] = {**(row.get("env") or {}), "stack": {"members": 1, "fallback": str(fb)}}
            yield row
        return
    except Exception as exc:
        rows = group.failed_rows(exc)
    yield from rows


class _StackedGroup:
    """K cells trained as one stacked model (:class:`modtransfer.run.stacked.StackedCellModule`)."""

    def __init__(self, cells: list[Cell], run_dir: Path, wandb_cfg: dict[str, Any], cache_dir: Path | None,
                 device: str) -> None:
        self.cells, self.run_dir, self.wandb_cfg, self.device = cells, run_dir, wandb_cfg, device
        self.runs = [CellRun(c, run_dir, wandb_cfg, cache_dir, device) for c in cells]
        self.t_start = time.perf_counter()

    def _build(self) -> tuple[Any, Any, Any, str]:
        from modtransfer.run.stacked import StackedCellModule, probe

        task: Task | None = None
        models = []
        for run in self.runs:
            task, spec, model, accel = run.prepare(task)
            models.append(model)
        assert task is not None, "a group has at least one member"
        budget = self.cells[0].budget
        vals = [task.val_batches(c.seed, budget.batch_size, budget.eval_batches) for c in self.cells]
        log_every = max(1, min(_cell.LOG_EVERY, budget.steps // 10 or 1))
        module = StackedCellModule(models[0], models, task, budget, vals, log_every)
        why = probe(module, task, [c.seed for c in self.cells], budget.batch_size)
        if why is not None:
            raise _Fallback(f"the model cannot run stacked ({why})")
        return task, spec, module, accel

    def train(self) -> list[dict[str, Any]]:
        from modtransfer.run.stacked import StackedDataModule

        task, spec, module, accel = self._build()
        budget = self.cells[0].budget
        trainer = make_trainer(budget, accel, None, module.log_every, precision=self.cells[0].precision)
        fit_cell(trainer, module, StackedDataModule(task, [c.seed for c in self.cells], budget.batch_size))
        t_end = time.perf_counter()
        module.flush(trainer.global_step, final=True)
        group_wall = t_end - self.t_start
        rows = []
        for k, run in enumerate(self.runs):
            self._finish_member(run, module, k, trainer.global_step, t_end, accel, task)
            run.row.env = {**run.row.env, "stack": {"members": len(self.runs), "member": k,
                                                    "group_wall_s": round(group_wall, 3)}}
            run.row.wall_s = group_wall / len(self.runs)
            if self.wandb_cfg["mode"] != "disabled":
                self._replay_wandb(run, spec, task)
            rows.append(sanitise_row(run.row.to_dict()))
        return rows

    def _finish_member(self, run: CellRun, module: Any, k: int, steps: int, t_end: float, accel: str,
                       task: Task) -> None:
        """Member ``k``'s outcome, costs, final metrics and curve-based events, into its row."""
        from modtransfer.run.diagnostics import plateau_level
        from modtransfer.run.events import detect

        member = module.members[k]
        steps = member.stopped_at if member.stopped_at is not None else steps
        run.row.update(status=member.status, failed_step=member.failed_step, error=member.reason, steps=steps,
                       curve=member.curve)
        run._costs(module, t_end, accel, tokens=member.tokens, share=len(self.runs))
        if member.status == "done":
            run._final_evaluation(module.evaluate(k, steps), task.primary_metric, steps)
            run._test_evaluation(lambda batches: module.score(k, batches), task)
        row = run.row.to_dict()
        try:
            events = detect(row, [], plateau_level(task, row.get("metrics") or {}))
        except Exception:  # a task's trivial score: never fails the member
            events = []
        run.row.update(diagnostics=[], events=events)

    def _replay_wandb(self, run: CellRun, spec: ModelSpec, task: Task) -> None:
        """The member's W&B run, written after the group trained: its curve on ``trainer/global_step``."""
        from modtransfer.run.wandb_cell import close_wandb, wandb_logger

        try:
            logger = wandb_logger(run.cell, spec, task, self.run_dir, self.wandb_cfg)
        except Exception as exc:  # never lose a member to a logging problem
            run.row.error = (run.row.error or "") + f"\n(wandb: {exc})"
            return
        for point in run.row.curve or []:
            values = {k: v for k, v in point.items() if k != "step" and v is not None}
            if values:
                logger.log_metrics(values, step=point["step"])
        close_wandb(logger, run.row, self.run_dir, run.t_start, wall_s=run.row.wall_s)

    def failed_rows(self, exc: Exception) -> list[dict[str, Any]]:
        """Every member failed with the group's error (a plugin's frame named where it is one)."""
        from modtransfer.check.plugin_errors import plugin_frame

        where = plugin_frame(exc)
        error = f"{type(exc).__name__}: {exc}" + (f" [{where}]" if where else "") + f"\n{traceback.format_exc()}"
        rows = []
        for run in self.runs:
            run.row.update(status="failed", error=error)
            run.row.wall_s = (time.perf_counter() - self.t_start) / len(self.runs)
            rows.append(sanitise_row(run.row.to_dict()))
        return rows

