"""W&B for one cell: its run (id = cell id, offline by default, folders inside ``RUN_DIR/wandb``), its
name, tags and config, and the summary written when the cell ends. Where W&B's folders go is
:mod:`modtransfer.run.envinfo`'s (one place for cells and reports alike).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from modtransfer.run.cells import Cell
from modtransfer.run.row import Row

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
    config = {"spec": spec.to_dict(), "task": cell.task, "task_config": task.describe(), "budget": cell.budget.to_dict(), "precision": cell.precision,
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


def close_wandb(logger: Any, row: Row, run_dir: Path, t_start: float, wall_s: float | None = None) -> None:
    """Write the summary and finish the cell's W&B run; a logging problem is noted in the row, never raised.

    ``wall_s``: the cell's wall time when it is not the time since ``t_start`` (a stacked member's share)."""
    try:
        import wandb

        run = logger.experiment
        row.wandb_dir = os.path.relpath(run.dir, run_dir)
        wall = time.perf_counter() - t_start if wall_s is None else wall_s
        run.summary.update(wandb_summary({**row.to_dict(), "wall_s": wall}))
        wandb.finish(exit_code=0 if row.status == "done" else 1)
    except Exception as exc:  # never lose a cell to a logging problem
        row.error = (row.error or "") + f"\n(wandb: {exc})"
