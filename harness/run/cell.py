"""One cell: a Lightning ``Trainer.fit`` of one (variant, task, seed) plus its evaluation.

The result is a :class:`~modtransfer.run.row.Row` (as a dict) for the results store; nothing is
written here. The training itself is :mod:`modtransfer.run.training` (the LightningModule),
divergence :mod:`modtransfer.run.divergence`, the cell's W&B run :mod:`modtransfer.run.wandb_cell`.

Divergence: a cell whose training loss becomes NaN/inf, or stays above ``diverge_factor`` x its
loss at step 0 for ``diverge_patience`` steps in a row, stops with status ``diverged`` and the
first bad step as ``failed_step``; so does a cell whose final evaluation has a non-finite
metric. A diverged cell never carries a primary value: it is a failure, counted as a rate,
never averaged into a mean.
"""

from __future__ import annotations

import functools
import math
import signal
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modtransfer.run.plan_types import Cell
from modtransfer.run.row import Row, sanitise_row
from modtransfer.run.training import CellModule, lightning_api, make_datamodule, make_module, make_trainer

if TYPE_CHECKING:
    from modtransfer.core.model import Transformer
    from modtransfer.core.spec import ModelSpec
    from modtransfer.core.task import Task

LOG_EVERY = 25


@functools.cache
def matmul_peak(device: str, precision: str = "auto") -> float:
    """This machine's matmul peak in the cell's precision (FLOP/s): :func:`modtransfer.core.peak.machine_peak`,
    measured once per machine (cached on disk) and read once per process."""
    from modtransfer.core.peak import machine_peak

    return float(machine_peak(device, precision)["flops"])


class CellRun:
    """The state of one cell while it trains: its row, its W&B logger, its start time."""

    def __init__(self, cell: Cell, run_dir: Path, wandb_cfg: dict[str, Any], cache_dir: Path | None,
                 device: str) -> None:
        self.cell, self.run_dir, self.wandb_cfg, self.cache_dir, self.device = cell, run_dir, wandb_cfg, cache_dir, device
        self.t_start = time.perf_counter()
        self.row = Row.for_cell(cell)
        self.logger: Any = None

    def prepare(self, task: Task | None = None) -> tuple[Task, ModelSpec, Transformer, str]:
        """The task (data prepared; ``task``: one already prepared for a cell of the same task
        options), its spec, the model (seeded) and the accelerator; fills the row's sizes."""
        from modtransfer.core.model import build, count_flops, count_params
        from modtransfer.core.precision import resolve_precision
        from modtransfer.core.task import TASKS
        from modtransfer.run.envinfo import environment

        cell, row = self.cell, self.row
        fresh = task is None
        if task is None:
            task = TASKS.get(cell.task)(cell.task_config, self.cache_dir)
        row.update(primary_metric=task.primary_metric, higher_is_better=int(task.higher_is_better))
        accel = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        row.env = {**environment(accel), "contract_gate": cell.gate,
                   "precision": resolve_precision(cell.precision, accel)}
        if fresh:
            task.prepare()
        spec = task.configure_spec(cell.spec)
        row.spec = spec.to_dict()
        lightning_api().seed_everything(cell.seed, workers=False, verbose=False)
        model = build(spec, task.topology, seed=cell.seed)  # common random numbers: draws by place (core.draws)
        row.params = count_params(model)
        seq = task.config.get("seq_len") or task.config.get("max_len") or spec.max_len
        row.flops_per_token = count_flops(spec, task.topology, int(seq))
        return task, spec, model, accel

    def train(self) -> None:
        """Prepare, fit, evaluate: the row's outcome, costs, metrics, diagnostics and events."""
        from modtransfer.run.diagnostics import CellDiagnostics

        cell = self.cell
        task, spec, model, accel = self.prepare()
        val = task.val_batches(cell.seed, cell.budget.batch_size, cell.budget.eval_batches)
        log_every = max(1, min(LOG_EVERY, cell.budget.steps // 10 or 1))
        module = make_module(model, task, cell, val, log_every, self.t_start)
        if self.wandb_cfg["mode"] != "disabled":
            from modtransfer.run.wandb_cell import wandb_logger

            self.logger = wandb_logger(cell, spec, task, self.run_dir, self.wandb_cfg)
        diag = CellDiagnostics(model, cell.budget)  # gradient norms, attention entropy, ... every diag_every steps
        trainer = make_trainer(cell.budget, accel, self.logger, log_every, callbacks=diag.callbacks,
                               precision=cell.precision)
        fit_cell(trainer, module, make_datamodule(task, cell.seed, cell.budget.batch_size))
        t_end = time.perf_counter()
        steps = trainer.global_step
        module.flush(steps, final=True)
        self.row.update(status=module.status, failed_step=module.failed_step, error=module.reason, steps=steps,
                        curve=module.curve)
        self._costs(module, t_end, accel)
        if module.status in ("done", "timeout"):
            self._final_evaluation(module.evaluate(steps), task.primary_metric, steps)
            self._test_evaluation(module.score, task)
        self.row.update(**diag.result(self.row.to_dict(), task))  # "diagnostics" and "events" (why it ended so)

    def _costs(self, module: Any, t_end: float, accel: str, tokens: int | None = None, share: int = 1) -> None:
        """Start-up and training seconds, tokens/s and MFU; a stacked member (``share`` members
        trained together) is charged ``1/share`` of the group's start-up and training time."""
        row = self.row
        if module.first_step_at is None:
            return
        row.startup_s = (module.first_step_at - self.t_start) / share
        row.train_s = (t_end - module.first_step_at) / share
        row.tokens_per_s = (module.tokens if tokens is None else tokens) / max(row.train_s, 1e-9)
        if row.flops_per_token:
            row.mfu = 3.0 * row.flops_per_token * row.tokens_per_s / matmul_peak(accel, self.cell.precision)

    def _test_evaluation(self, score: Any, task: Task) -> None:
        """With ``budget.test_batches``, the final model's metrics on the task's test split, as ``test_<metric>``."""
        n = self.cell.budget.test_batches
        if not n or self.row.status not in ("done", "timeout"):
            return
        batches = task.test_batches(self.cell.seed, self.cell.budget.batch_size, n)
        if batches:
            self.row.metrics.update({f"test_{k}": (v if math.isfinite(v) else None) for k, v in score(batches).items()})

    def _final_evaluation(self, metrics: dict[str, float], primary: str, steps: int) -> None:
        """The final metrics; a non-finite one makes the cell diverged, a missing primary one failed."""
        row = self.row
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        row.metrics = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
        value = metrics.get(primary)
        if bad:
            # a NaN val_loss next to a finite BLEU (of garbage) is still a diverged model
            row.update(status="diverged", failed_step=steps, primary_value=None,
                       error=f"final evaluation is not finite ({', '.join(bad)})")
        elif value is None:
            row.update(status="failed", primary_value=None,
                       error=f"the task's evaluate returned no {primary!r} (its primary metric)")
        else:
            row.primary_value = value


def fit_cell(trainer: Any, module: CellModule, datamodule: Any) -> None:
    """``trainer.fit``, with Ctrl-C raised as KeyboardInterrupt (Lightning turns it into ``sys.exit(1)``)."""
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=datamodule)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, sigint)
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt


def run_cell(cell: Cell, run_dir: Path, *, wandb_cfg: dict[str, Any] | None = None, cache_dir: Path | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Train and evaluate one cell; always returns a row (status failed with a traceback on errors)."""
    wandb_cfg = {"mode": "offline", "project": "modtransfer", "entity": None, **(wandb_cfg or {})}
    run = CellRun(cell, run_dir, wandb_cfg, cache_dir, device)
    try:
        run.train()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        from modtransfer.check.plugin_errors import plugin_frame

        where = plugin_frame(exc)  # a plugin's file, line and function, when the error came from one
        run.row.update(status="failed", error=f"{type(exc).__name__}: {exc}" + (f" [{where}]" if where else "")
                       + f"\n{traceback.format_exc()}")
    finally:
        if run.logger is not None:
            from modtransfer.run.wandb_cell import close_wandb

            close_wandb(run.logger, run.row, run_dir, run.t_start)
    run.row.wall_s = time.perf_counter() - run.t_start
    return sanitise_row(run.row.to_dict())
