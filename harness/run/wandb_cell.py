"""W&B for one cell: its run (id = cell id, offline by default, folders inside ``RUN_DIR/wandb``), its
name, tags and config, and the summary written when the cell ends. Where W&B's folders go is
:mod:`modtransfer.run.wandb_folders`' (one place for cells and reports alike).

Every metric is logged under a key of its task that carries its unit (``lm/val_loss_nats_per_char``,
``mt/bleu``: :meth:`~modtransfer.core.task.Task.metric_key`), so no chart or summary column mixes
tasks, units or directions. Runs are grouped by run folder (``group``) and, within it, by task and
variant (``job_type`` = ``task/variant``): W&B's grouping draws one line per variant of a task. A
variant's summary holds its paired improvement over the same-seed baseline
(:data:`~modtransfer.core.task_card.SIGN_CONVENTION`) when that baseline is already in the store;
:mod:`modtransfer.run.wandb_pairs` fills in the others once their baseline has finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.core.task_card import SIGN_CONVENTION, improvement
from modtransfer.run.plan_types import Cell
from modtransfer.run.row import Row

if TYPE_CHECKING:
    from modtransfer.core.spec import ModelSpec
    from modtransfer.core.task import Task

#: the x axis of every W&B chart of a cell: the trainer's optimiser step, not W&B's own row counter
WANDB_STEP = "trainer/global_step"


BASELINE = "baseline"


def wandb_name(cell: Cell) -> str:
    """The W&B display name of a cell, unique in its run folder: ``variant/task/seed`` (and its
    hyper-parameters, if any)."""
    hp = ",".join(f"{k}={v}" for k, v in sorted(cell.hparams.items()))
    return f"{cell.variant}/{cell.task}/{cell.seed}" + (f"[{hp}]" if hp else "")


def wandb_job_type(task: str, variant: str) -> str:
    """The W&B job type of a cell: ``task/variant`` (W&B's second grouping level, at most 64 characters)."""
    return f"{task}/{variant}"[:64]


def wandb_tags(cell: Cell, spec: ModelSpec) -> list[str]:
    """Tags to filter cells by in W&B: ``slot:<slot>`` per changed slot, ``impl:<implementation>``, the size."""
    slots = [s for s in cell.slots if s != "baseline"]
    tags = [f"slot:{s}" for s in slots] or ["baseline"]
    tags += [f"impl:{getattr(spec, 'implementation', 'modtransfer')}", f"size:{cell.size}"]
    return sorted({t[:64] for t in tags})


def _unit_logger(run: Any, task: Task) -> Any:
    """Lightning's W&B logger, logging each metric under its task's key with its unit (``val_loss`` ->
    ``lm/val_loss_nats_per_char``); the step and anything the task does not know keep their names."""
    from lightning.pytorch.loggers import WandbLogger

    class UnitLogger(WandbLogger):
        task: Task

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            super().log_metrics({metric_key(task, k): v for k, v in metrics.items()}, step=step)

    logger = UnitLogger(experiment=run)
    logger.task = task
    return logger


def metric_key(task: Task, name: str) -> str:
    """``name``'s W&B key for ``task``: the task's key with its unit for a ``train_*`` / ``val_*`` metric."""
    return task.metric_key(name) if name.startswith(("train_", "val_")) else name


def wandb_logger(cell: Cell, spec: ModelSpec, task: Task, run_dir: Path, wandb_cfg: dict[str, Any]):
    """The cell's W&B run, wrapped for Lightning (offline by default, every folder inside ``run_dir/wandb``).

    Run id = cell id: a cell trained again (killed, failed, ``--retry-failed``) logs to the same
    run, and its older local run folders are removed first, so ``RUN_DIR/wandb`` holds one run
    per cell. Group = benchmark + the run folder's id (two folders of one benchmark never merge),
    job type = task/variant, name = variant/task/seed. The run is created here rather than by ``WandbLogger``,
    whose ``wandb.init`` call passes the ``anonymous`` argument W&B deprecated (a warning per cell).
    """
    from modtransfer.core.variant import VARIANTS
    from modtransfer.run.wandb_folders import apply_wandb_env, remove_local_runs, run_folder_id, wandb_group

    apply_wandb_env(run_dir, wandb_cfg["mode"])
    remove_local_runs(run_dir, cell.cell_id)
    papers = [VARIANTS.entry(p.split("(")[0]).meta.get("paper", "")
              for p in cell.variant.split("+") if p.split("(")[0] in VARIANTS]
    config = {"spec": spec.to_dict(), "task": cell.task, "task_config": task.describe(), "budget": cell.budget.to_dict(), "precision": cell.precision,
              "variant": cell.variant, "seed": cell.seed, "size": cell.size, "hparams": cell.hparams,
              "implementation": getattr(spec, "implementation", "modtransfer"), "cell_id": cell.cell_id,
              "benchmark": cell.benchmark, "slots": list(cell.slots), "papers": papers,
              "task_card": task.card_info(), "sign_convention": SIGN_CONVENTION}
    init = {"project": wandb_cfg["project"], "entity": wandb_cfg.get("entity"), "id": cell.cell_id,
            "group": wandb_group(cell.benchmark, run_folder_id(run_dir)), "name": wandb_name(cell),
            "job_type": wandb_job_type(cell.task, cell.variant), "tags": wandb_tags(cell, spec), "config": config,
            "mode": wandb_cfg["mode"]}
    run = open_run(init, run_dir)
    logger = _unit_logger(run, task)
    logger.init = init
    return logger


def open_run(init: dict[str, Any], run_dir: Path) -> Any:
    """``wandb.init`` with ``init`` (resumable by id, quiet, every folder inside ``run_dir/wandb``),
    every chart on :data:`WANDB_STEP`."""
    import wandb

    run = wandb.init(**init, resume="allow", dir=str(Path(run_dir).resolve() / "wandb"), reinit="finish_previous",
                     settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False))
    run.define_metric(WANDB_STEP)
    run.define_metric("*", step_metric=WANDB_STEP, step_sync=True)
    return run


def wandb_summary(row: dict[str, Any], task: Task, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """A cell's W&B summary: its status and costs (as in the results store; ``mfu``: model-FLOP
    utilisation), every final metric under its task's key with its unit, which of them it decides
    on, and, given the same-seed ``baseline`` row, the paired improvement (:func:`paired_summary`)."""
    out = {
        "status": row["status"], "decides_on": task.metric_key(row["primary_metric"]),
        "higher_is_better": bool(row["higher_is_better"]), "params": row["params"],
        "flops_per_token": row["flops_per_token"], "tokens_per_s": row["tokens_per_s"], "mfu": row["mfu"],
        "wall_s": row["wall_s"], "train_s": row["train_s"], "startup_s": row["startup_s"], "steps": row["steps"],
        "failed_step": row["failed_step"], "error": (row["error"] or "").split("\n", 1)[0] or None,
        **{metric_key(task, k): v for k, v in (row["metrics"] or {}).items()},
    }
    if baseline is not None:
        out.update(paired_summary(row, baseline, task.metric_key(row["primary_metric"])))
    return out


def paired_summary(row: dict[str, Any], baseline: dict[str, Any], key: str) -> dict[str, Any]:
    """A variant's paired improvement over the same-seed ``baseline`` row on the metric it decides on:
    ``<task>/paired_improvement_<metric with unit>`` (positive = better, :data:`SIGN_CONVENTION`),
    the baseline's value and run id; {} unless both have a value. ``key``: the metric's W&B key."""
    v, b = row.get("primary_value"), baseline.get("primary_value")
    if v is None or b is None or row["primary_metric"] != baseline["primary_metric"]:
        return {}
    task_name, metric = key.split("/", 1)
    return {f"{task_name}/paired_improvement_{metric}": improvement(v, b, bool(row["higher_is_better"])),
            f"{task_name}/paired_baseline_{metric}": b, "paired/baseline_run": baseline["cell_id"],
            "paired/sign_convention": SIGN_CONVENTION}


def same_seed_baseline(row: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The done baseline row that ``row`` (a variant's) pairs with in ``run_dir``'s store: same task, seed,
    size, hyper-parameters, task configuration, budget and implementation; None if there is none yet."""
    from modtransfer.run.store import Store

    if row["variant"] == BASELINE or row["status"] != "done":
        return None
    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        return None
    impl = (row.get("spec") or {}).get("implementation")
    for b in Store(path, readonly=True).rows(variant=BASELINE, task=row["task"], seed=row["seed"],
                                             size=row["size"], status="done"):
        if (b["hparams"] == row["hparams"] and b["task_config"] == row["task_config"]
                and _identity(b["budget"]) == _identity(row["budget"]) and (b.get("spec") or {}).get("implementation") == impl):
            return b
    return None


def _identity(budget: dict[str, Any]) -> dict[str, Any]:
    """A stored budget as cell ids see it (how often a cell is evaluated does not split a pair)."""
    return {k: v for k, v in budget.items() if k != "eval_every"}


def close_wandb(logger: Any, row: Row, run_dir: Path, t_start: float, wall_s: float | None = None) -> None:
    """Write the summary and finish the cell's W&B run; a logging problem is noted in the row, never raised.

    ``wall_s``: the cell's wall time when it is not the time since ``t_start`` (a stacked member's share)."""
    try:
        import wandb

        run = logger.experiment
        row.wandb_dir = os.path.relpath(run.dir, run_dir)
        wall = time.perf_counter() - t_start if wall_s is None else wall_s
        values = {**row.to_dict(), "wall_s": wall}
        summary = wandb_summary(values, logger.task, same_seed_baseline(values, run_dir))
        run.summary.update(summary)
        folder = Path(run.dir).parent
        wandb.finish(exit_code=0 if row.status == "done" else 1)
        write_sidecar(folder, logger, values, summary)
    except Exception as exc:  # never lose a cell to a logging problem
        row.error = (row.error or "") + f"\n(wandb: {exc})"


#: A cell's W&B run folder holds this file: how the run was opened, its summary and its metrics' keys,
#: so :mod:`modtransfer.run.wandb_pairs` can add a paired improvement once the baseline has finished.
SIDECAR = "modtransfer-run.json"


def write_sidecar(folder: Path, logger: Any, row: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write :data:`SIDECAR` into the run's folder (``paired``: whether the summary has its improvement)."""
    import json

    names = {k for point in row.get("curve") or [] for k in point} | set(row.get("metrics") or {})
    keys = {k: metric_key(logger.task, k) for k in sorted(names | {row["primary_metric"]}) if k != "step"}
    paired = any(k.split("/", 1)[-1].startswith("paired_improvement_") for k in summary)
    data = {"init": logger.init, "summary": summary, "keys": keys, "paired": paired}
    (folder / SIDECAR).write_text(json.dumps(data, default=str), encoding="utf-8")
