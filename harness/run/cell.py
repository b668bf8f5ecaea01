"""One cell: a Lightning ``Trainer.fit`` of one (variant, task, seed) plus its evaluation.

The training step stays free of host synchronisation: the loss curve, the divergence flag
and the first bad step are accumulated on the device and read every ``log_every`` steps.
Evaluation calls the task's ``evaluate`` on the fixed held-out batches (every ``eval_every``
steps and at the end). The result is a row for the results store; nothing is written here.

Divergence (:class:`DivergenceMonitor`): a cell whose training loss becomes NaN/inf, or stays
above ``diverge_factor`` x its loss at step 0 for ``diverge_patience`` steps in a row, stops (at
the next read of the flag) with status ``diverged`` and the first bad step as ``failed_step``;
so does a cell whose final evaluation has a non-finite metric. A diverged cell never carries a
primary value: it is a failure, counted as a rate, never averaged into a mean. The patience
keeps a spike that training recovers from (Fixup or ReZero at a high learning rate jump
to 10-10^4 x the initial loss for a few steps, then train well) from counting as divergence.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from modtransfer.run.plan import Cell
from modtransfer.run.store import sanitise_row

LOG_EVERY = 25
#: steps in a row the loss must stay above ``diverge_factor`` x its initial value (at most)
DIVERGE_PATIENCE = 20


def diverge_factor_for(task: Any, budget: Any) -> float:
    """The divergence factor a cell uses: its budget's, or the task's own default.

    A task may declare ``diverge_factor`` (a class attribute) when the harness default does
    not suit its loss; it applies only while the budget keeps the ``Budget`` default, so a
    plan that sets ``budget.diverge_factor`` explicitly always wins. 0 checks NaN/inf only.
    """
    from dataclasses import fields

    own = getattr(task, "diverge_factor", None)
    default = next(f.default for f in fields(type(budget)) if f.name == "diverge_factor")
    if own is not None and budget.diverge_factor == default:
        return float(own)
    return float(budget.diverge_factor)


def diverge_patience_for(task: Any, budget: Any) -> int:
    """Steps in a row above the limit that make a cell diverged: the task's ``diverge_patience``
    if it declares one, else :data:`DIVERGE_PATIENCE` capped at a tenth of the budget's steps."""
    own = getattr(task, "diverge_patience", None)
    if own is not None:
        return max(1, int(own))
    return max(1, min(DIVERGE_PATIENCE, budget.steps // 10))


def divergence_limit(initial_loss: float, factor: float) -> float | None:
    """The loss above which a cell has diverged, or None when only NaN/inf count.

    ``factor`` x the step-0 loss, for a positive finite step-0 loss only: a multiple of a zero
    or negative loss (a log-likelihood, say) would flag every step as diverged.
    """
    if factor > 0 and math.isfinite(initial_loss) and initial_loss > 0:
        return factor * initial_loss
    return None


class DivergenceMonitor:
    """Watches the training loss on its device, with no host synchronisation per step.

    :meth:`update` takes each step's detached loss; :meth:`first_bad_step` (one sync, called
    every ``log_every`` steps) returns the first step of divergence or None: a NaN/inf loss,
    or the start of a run of ``patience`` steps in a row above ``limit`` (set once the step-0
    loss is known; None checks NaN/inf only).
    """

    def __init__(self, patience: int, device: torch.device | str = "cpu") -> None:
        self.patience = max(1, patience)
        self.limit: float | None = None
        self._run = torch.zeros((), dtype=torch.long, device=device)        # steps in a row above the limit
        self._run_start = torch.full((), -1, dtype=torch.long, device=device)
        self._bad = torch.full((), -1, dtype=torch.long, device=device)

    def to(self, device: torch.device | str) -> DivergenceMonitor:
        """Move the counters to the training device (the module's ``on_train_start``)."""
        self._run, self._run_start, self._bad = (t.to(device) for t in (self._run, self._run_start, self._bad))
        return self

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Account for the loss of optimiser step ``step`` (a few device ops, no sync)."""
        nonfinite = ~torch.isfinite(loss)
        bad_at = torch.full_like(self._bad, step)
        bad = nonfinite
        if self.limit is not None:
            over = (loss > self.limit) & ~nonfinite
            self._run = torch.where(over, self._run + 1, torch.zeros_like(self._run))
            self._run_start = torch.where(over & (self._run == 1), bad_at, self._run_start)
            bad = bad | (self._run >= self.patience)
            bad_at = torch.where(nonfinite, bad_at, self._run_start)
        self._bad = torch.where(bad & (self._bad < 0), bad_at, self._bad)

    def first_bad_step(self, final: bool = False) -> int | None:
        """The step where divergence began, or None so far (reads the device once).

        ``final``: training has ended, so a run above the limit shorter than the patience
        counts too (the loss blew up in the last steps and never came back).
        """
        bad = int(self._bad)
        if bad < 0 and final and int(self._run) > 0:
            bad = int(self._run_start)
        return bad if bad >= 0 else None


def _lightning():
    import logging
    import warnings

    import lightning as L

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    return L


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether AdamW has a fused kernel here: CUDA, and CPU from torch 2.4 (one pass over each
    parameter instead of about eight elementwise passes; the same update up to float rounding)."""
    if device.type == "cuda":
        return True
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def make_module(model: torch.nn.Module, task: Any, cell: Cell, val_batches: list[Any], log_every: int,
                t_start: float):
    """The LightningModule of a cell (built lazily so that importing this file stays cheap)."""
    L = _lightning()
    from modtransfer.core.schedule import lr_lambda

    budget = cell.budget
    factor = diverge_factor_for(task, budget)
    patience = diverge_patience_for(task, budget)

    class CellModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.curve: list[dict[str, Any]] = []
            self.status = "done"
            self.failed_step: int | None = None
            self.reason: str | None = None
            self.tokens = 0
            self.first_step_at: float | None = None
            self.initial_loss: float | None = None
            self._loss_sum = torch.zeros(())
            self._loss_n = 0
            self.divergence = DivergenceMonitor(patience)
            self.final_metrics: dict[str, float] = {}

        def configure_optimizers(self):
            decay, no_decay = [], []
            for p in self.model.parameters():
                if not p.requires_grad:
                    continue
                (decay if p.ndim >= 2 and budget.weight_decay > 0 else no_decay).append(p)
            groups = [{"params": decay, "weight_decay": budget.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
            groups = [g for g in groups if g["params"]]
            opt = torch.optim.AdamW(groups, lr=budget.lr, betas=budget.betas,
                                    fused=True if fused_adamw_supported(self.device) else None)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(budget.schedule, budget.steps, budget.warmup))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def on_train_start(self) -> None:
            self._loss_sum = self._loss_sum.to(self.device)
            self.divergence.to(self.device)

        def training_step(self, batch: Any, batch_idx: int):
            if self.first_step_at is None:
                self.first_step_at = time.perf_counter()
            loss = task.loss(self.model, batch)
            aux = self.model.aux_loss()
            total = loss + aux if isinstance(aux, torch.Tensor) else loss
            det = loss.detach()
            self._loss_sum += det
            self._loss_n += 1
            self.tokens += task.count_tokens(batch)
            self.divergence.update(det, self.global_step)
            return total

        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                        gradient_clip_algorithm: str | None = None) -> None:
            # the gradient norm, clipped here as Lightning's fp32 plugin does it: its bf16-mixed
            # plugin refuses to clip for fused optimizers (they unscale a GradScaler's gradients
            # inside step(), and cells use no GradScaler), which would fail every CUDA cell
            if gradient_clip_val:
                params = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = self.global_step  # optimiser steps taken so far
            if self.initial_loss is None:  # the loss of step 0 (the only one summed so far)
                self.initial_loss = float(self._loss_sum)
                self.divergence.limit = divergence_limit(self.initial_loss, factor)
            if step % log_every == 0 or step >= budget.steps:
                self._flush(step, final=step >= budget.steps)
            if self.status != "done":
                return
            if budget.max_seconds and time.perf_counter() - t_start > budget.max_seconds:
                self._stop("timeout", step, f"over the wall-clock budget of {budget.max_seconds:g} s")
                return
            if budget.eval_every and step % budget.eval_every == 0 and step < budget.steps:
                self.evaluate(step)

        def _flush(self, step: int, final: bool = False) -> None:
            if self._loss_n:
                mean = float(self._loss_sum) / self._loss_n
                self.curve.append({"step": step, "train_loss": mean if math.isfinite(mean) else None})
                if self.logger is not None:
                    self.logger.log_metrics({"train_loss": mean}, step=step)
                self._loss_sum.zero_()
                self._loss_n = 0
            bad = self.divergence.first_bad_step(final)
            if bad is not None and self.status == "done":
                self._stop("diverged", bad, "training loss became NaN/inf" if self.divergence.limit is None else
                           f"training loss NaN/inf, or above {factor:g} x its initial value "
                           f"({self.initial_loss:.4g} at step 0) for {patience} steps in a row")

        def _stop(self, status: str, step: int, reason: str) -> None:
            self.status, self.failed_step, self.reason = status, step, reason
            self.trainer.should_stop = True

        @torch.no_grad()
        def evaluate(self, step: int) -> dict[str, float]:
            was = self.model.training
            self.model.eval()
            batches = [self._to_device(b) for b in val_batches]
            metrics = {k: float(v) for k, v in task.evaluate(self.model, batches).items()}
            self.model.train(was)
            if self.curve and self.curve[-1]["step"] == step:
                self.curve[-1].update(metrics)
            else:
                self.curve.append({"step": step, **metrics})
            if self.logger is not None:
                self.logger.log_metrics(metrics, step=step)
            return metrics

        def _to_device(self, batch: Any) -> Any:
            return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    return CellModule()


def make_datamodule(task: Any, seed: int, batch_size: int):
    L = _lightning()

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(task.train_batches(seed, batch_size))

    class TaskDataModule(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(_Stream(), batch_size=None, num_workers=0)

    return TaskDataModule()


def make_trainer(budget: Any, accel: str, logger: Any, log_every: int, callbacks: list[Any] | None = None,
                 precision: str = "auto"):
    """The Lightning Trainer of a cell: ``budget.steps`` optimiser steps, no checkpoints, no sanity
    or Lightning validation (the cell evaluates itself), in the cell's ``precision``
    (:mod:`modtransfer.core.precision`: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere)."""
    from modtransfer.core.precision import lightning_precision, resolve_precision

    L = _lightning()
    return L.Trainer(
        accelerator=accel, devices=1, max_steps=budget.steps, max_epochs=-1, logger=logger or False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=log_every,
        gradient_clip_val=budget.grad_clip or None, precision=lightning_precision(resolve_precision(precision, accel)),
        deterministic=False, use_distributed_sampler=False, callbacks=callbacks,
    )


@functools.cache
def matmul_peak(device: str, precision: str = "auto") -> float:
    """This machine's matmul peak in the cell's precision (FLOP/s): :func:`modtransfer.core.peak.machine_peak`,
    measured once per machine (cached on disk) and read once per process."""
    from modtransfer.core.peak import machine_peak

    return float(machine_peak(device, precision)["flops"])


def run_cell(cell: Cell, run_dir: Path, *, wandb_cfg: dict[str, Any] | None = None, cache_dir: Path | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Train and evaluate one cell; always returns a row (status failed with a traceback on errors)."""
    t_start = time.perf_counter()
    wandb_cfg = {"mode": "offline", "project": "modtransfer", "entity": None, **(wandb_cfg or {})}
    from modtransfer.core.model import build, count_flops, count_params
    from modtransfer.core.task import TASKS
    from modtransfer.run.envinfo import environment

    row: dict[str, Any] = {
        "cell_id": cell.cell_id, "benchmark": cell.benchmark, "variant": cell.variant, "task": cell.task,
        "seed": cell.seed, "size": cell.size, "hparams": cell.hparams, "status": "failed",
        "primary_metric": "", "higher_is_better": 0, "primary_value": None, "metrics": {}, "curve": [],
        "params": None, "flops_per_token": None, "tokens_per_s": None, "mfu": None, "train_s": None, "wall_s": None,
        "startup_s": None, "steps": 0, "failed_step": None, "error": None, "spec": cell.spec.to_dict(),
        "task_config": cell.task_config, "budget": cell.budget.to_dict(), "env": {}, "wandb_dir": None,
    }
    logger = None
    try:
        L = _lightning()
        task = TASKS.get(cell.task)(cell.task_config, cache_dir)
        row["primary_metric"] = task.primary_metric
        row["higher_is_better"] = int(task.higher_is_better)
        accel = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        row["env"] = {**environment(accel), "contract_gate": cell.gate}
        task.prepare()
        spec = task.configure_spec(cell.spec)
        row["spec"] = spec.to_dict()
        L.seed_everything(cell.seed, workers=False, verbose=False)
        model = build(spec, task.topology)
        row["params"] = count_params(model)
        seq = task.config.get("seq_len") or task.config.get("max_len") or spec.max_len
        row["flops_per_token"] = count_flops(spec, task.topology, int(seq))
        val = task.val_batches(cell.seed, cell.budget.batch_size, cell.budget.eval_batches)
        log_every = max(1, min(LOG_EVERY, cell.budget.steps // 10 or 1))
        module = make_module(model, task, cell, val, log_every, t_start)
        if wandb_cfg["mode"] != "disabled":
            logger = wandb_logger(cell, spec, task, run_dir, wandb_cfg)
        from modtransfer.run.diagnostics import CellDiagnostics

        diag = CellDiagnostics(model, cell.budget)  # gradient norms, attention entropy, ... every diag_every steps
        trainer = make_trainer(cell.budget, accel, logger, log_every, callbacks=diag.callbacks)
        sigint = signal.getsignal(signal.SIGINT)
        try:
            trainer.fit(module, datamodule=make_datamodule(task, cell.seed, cell.budget.batch_size))
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT; make it an interruption again
            if trainer.interrupted:
                signal.signal(signal.SIGINT, sigint)
                raise KeyboardInterrupt from None
            raise
        if trainer.interrupted:
            raise KeyboardInterrupt
        t_end = time.perf_counter()
        steps = trainer.global_step
        module._flush(steps, final=True)
        row.update(status=module.status, failed_step=module.failed_step, error=module.reason, steps=steps,
                   curve=module.curve)
        if module.first_step_at is not None:
            row["startup_s"] = module.first_step_at - t_start
            row["train_s"] = t_end - module.first_step_at
            row["tokens_per_s"] = module.tokens / max(row["train_s"], 1e-9)
            if row["flops_per_token"]:
                row["mfu"] = 3.0 * row["flops_per_token"] * row["tokens_per_s"] / matmul_peak(accel)
        if module.status in ("done", "timeout"):
            metrics = module.evaluate(steps)
            bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
            row["metrics"] = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            value = metrics.get(task.primary_metric)
            if bad:
                # a NaN val_loss next to a finite BLEU (of garbage) is still a diverged model
                row.update(status="diverged", failed_step=steps, primary_value=None,
                           error=f"final evaluation is not finite ({', '.join(bad)})")
            elif value is None:
                row.update(status="failed", primary_value=None,
                           error=f"the task's evaluate returned no {task.primary_metric!r} (its primary metric)")
            else:
                row["primary_value"] = value
        row.update(diag.result(row, task))  # the row's "diagnostics" and "events" (why it ended so)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        from modtransfer.check.contract import plugin_frame

        where = plugin_frame(exc)  # a plugin's file, line and function, when the error came from one
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}" + (f" [{where}]" if where else "")
                   + f"\n{traceback.format_exc()}")
    finally:
        if logger is not None:
            close_wandb(logger, row, run_dir, t_start)
    row["wall_s"] = time.perf_counter() - t_start
    return sanitise_row(row)


# -- W&B: one run per cell ------------------------------------------------------------------------
#: the x axis of every W&B chart of a cell: the trainer's optimiser step, not W&B's own row counter
WANDB_STEP = "trainer/global_step"


def wandb_name(cell: Cell) -> str:
    """The W&B display name of a cell: ``variant/seed`` (and its hyper-parameters, if any); the task is the job type."""
    hp = ",".join(f"{k}={v}" for k, v in sorted(cell.hparams.items()))
    return f"{cell.variant}/{cell.seed}" + (f"[{hp}]" if hp else "")


def wandb_tags(cell: Cell, spec: Any) -> list[str]:
    """Tags to filter cells by in W&B: ``slot:<slot>`` per changed slot, ``impl:<implementation>``, the size."""
    slots = [s for s in cell.slots if s != "baseline"]
    tags = [f"slot:{s}" for s in slots] or ["baseline"]
    tags += [f"impl:{getattr(spec, 'implementation', 'modtransfer')}", f"size:{cell.size}"]
    return sorted({t[:64] for t in tags})


def wandb_logger(cell: Cell, spec: Any, task: Any, run_dir: Path, wandb_cfg: dict[str, Any]):
    """The cell's W&B run, wrapped for Lightning (offline by default, every folder inside ``run_dir/wandb``).

    Run id = cell id: a cell trained again (killed, failed, ``--retry-failed``) logs to the same
    run, and its older local run folders are removed first, so ``RUN_DIR/wandb`` holds one run
    per cell. Group = benchmark + the run folder's id (two folders of one benchmark never merge),
    job type = task, name = variant/seed. The run is created here rather than by ``WandbLogger``,
    whose ``wandb.init`` call passes the ``anonymous`` argument W&B deprecated (a warning per cell).
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from modtransfer.core.variant import VARIANTS
    from modtransfer.run.envinfo import apply_wandb_env, remove_local_runs, run_folder_id, wandb_group

    apply_wandb_env(run_dir, wandb_cfg["mode"])
    remove_local_runs(run_dir, cell.cell_id)
    papers = [VARIANTS.entry(p.split("(")[0]).meta.get("paper", "")
              for p in cell.variant.split("+") if p.split("(")[0] in VARIANTS]
    config = {"spec": spec.to_dict(), "task": cell.task, "task_config": task.describe(), "budget": cell.budget.to_dict(),
              "variant": cell.variant, "seed": cell.seed, "size": cell.size, "hparams": cell.hparams,
              "implementation": getattr(spec, "implementation", "modtransfer"), "cell_id": cell.cell_id,
              "benchmark": cell.benchmark, "slots": list(cell.slots), "papers": papers}
    run = wandb.init(
        project=wandb_cfg["project"], entity=wandb_cfg.get("entity"), id=cell.cell_id, resume="allow",
        group=wandb_group(cell.benchmark, run_folder_id(run_dir)), job_type=cell.task, name=wandb_name(cell),
        tags=wandb_tags(cell, spec), config=config, dir=str(Path(run_dir).resolve() / "wandb"),
        mode=wandb_cfg["mode"], reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False))
    run.define_metric(WANDB_STEP)
    run.define_metric("*", step_metric=WANDB_STEP, step_sync=True)
    return WandbLogger(experiment=run)


def wandb_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A cell's W&B summary: the same keys for every task, so runs compare in one table.

    ``primary/value`` is the task's primary metric (None unless the cell is done), named by
    ``primary/name``; costs as in the results store (``mfu``: model-FLOP utilisation).
    """
    return {
        "status": row["status"], "primary/name": row["primary_metric"], "primary/value": row["primary_value"],
        "primary/higher_is_better": bool(row["higher_is_better"]), "params": row["params"],
        "flops_per_token": row["flops_per_token"], "tokens_per_s": row["tokens_per_s"], "mfu": row["mfu"],
        "wall_s": row["wall_s"], "train_s": row["train_s"], "startup_s": row["startup_s"], "steps": row["steps"],
        "failed_step": row["failed_step"], "error": (row["error"] or "").split("\n", 1)[0] or None,
        **row["metrics"],
    }


def close_wandb(logger: Any, row: dict[str, Any], run_dir: Path, t_start: float) -> None:
    """Write the summary and finish the cell's W&B run; a logging problem is noted in the row, never raised."""
    try:
        import wandb

        run = logger.experiment
        row["wandb_dir"] = os.path.relpath(run.dir, run_dir)
        run.summary.update(wandb_summary({**row, "wall_s": time.perf_counter() - t_start}))
        wandb.finish(exit_code=0 if row["status"] == "done" else 1)
    except Exception as exc:  # never lose a cell to a logging problem
        row["error"] = (row["error"] or "") + f"\n(wandb: {exc})"
