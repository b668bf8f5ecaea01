"""Push a report to Weights & Biases: one run of job type "report", and optionally a W&B Report.

The run (offline by default) carries the transfer matrix as a ``wandb.Table``, every figure as
a ``wandb.Image`` and each variant's verdict as a summary value. All W&B folders are kept
inside ``RUN_DIR/wandb``. The W&B Report is first built as plain JSON (the same shape as the
``wandb-workspaces`` reports API, ``wandb_workspaces.reports.v2``: one dict per block or panel
with its class name under "type"), so it can be saved and checked without network; only in
online mode is it turned into API objects and saved.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .figures import Figures
from .summary import Analysis, fmt, transfer_table

WANDB_ENV_DIRS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config", "WANDB_DATA_DIR": "data"}


@contextmanager
def wandb_dirs(run_dir: Path) -> Iterator[Path]:
    """Point every W&B folder inside ``run_dir/wandb`` for the duration; restore the environment after."""
    root = Path(run_dir).resolve() / "wandb"
    saved = {k: os.environ.get(k) for k in WANDB_ENV_DIRS}
    try:
        for k, sub in WANDB_ENV_DIRS.items():
            path = root / sub if sub else root
            path.mkdir(parents=True, exist_ok=True)
            os.environ[k] = str(path)
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def target(a: Analysis) -> tuple[str, str | None]:
    """(project, entity): the plan's ``wandb`` block, else $WANDB_PROJECT / $WANDB_ENTITY, else "modtransfer"."""
    w = a.plan.get("wandb") if isinstance(a.plan.get("wandb"), dict) else {}
    project = w.get("project") or os.environ.get("WANDB_PROJECT") or "modtransfer"
    entity = w.get("entity") or os.environ.get("WANDB_ENTITY") or None
    return str(project), (str(entity) if entity else None)


def log_run(a: Analysis, folder: Path, figs: Figures, run_dir: Path, mode: str) -> dict[str, Any] | None:
    """Log the report to a W&B run; returns its id, project, entity, folder and URL (online only)."""
    if mode == "disabled":
        return None
    if mode not in ("offline", "online"):
        raise ValueError(f"wandb_mode must be 'offline', 'online' or 'disabled', got {mode!r}")
    import wandb

    project, entity = target(a)
    with wandb_dirs(run_dir) as root:
        settings = wandb.Settings(console="off", disable_git=True, save_code=False, x_disable_stats=True,
                                  silent=True)
        run = wandb.init(project=project, entity=entity, group=a.benchmark, job_type="report",
                         name=f"report-{a.benchmark}", mode=mode, dir=str(root), settings=settings,
                         config={"benchmark": a.benchmark, "stats": {k: v for k, v in vars(a.settings).items() if k != "tasks"},
                                 "tasks": a.settings.tasks, "plan": a.plan},
                         reinit="create_new")
        columns, records = transfer_table(a)
        try:
            payload: dict[str, Any] = {
                "transfer_matrix": wandb.Table(columns=columns, data=records),
                "verdicts": wandb.Table(columns=["variant", "verdict", "why", "overall_effect_sd"],
                                        data=[[v, *a.verdicts[v], a.overall[v] if math.isfinite(a.overall[v])
                                               else None] for v in a.order]),
            }
            for f in figs.all():
                payload[f"plots/{Path(f).stem}"] = wandb.Image(str(folder / f))
            run.log(payload)
            for v in a.order:
                run.summary[f"verdict/{v}"] = a.verdicts[v][0]
            if math.isfinite(a.agreement.mean_tau):
                run.summary["agreement/mean_kendall_tau"] = a.agreement.mean_tau
            info = {"id": run.id, "project": project, "entity": entity, "dir": str(Path(run.dir).parent),
                    "url": run.url if mode == "online" else None}
        finally:
            run.finish()
    return info


def report_definition(a: Analysis, figs: Figures, project: str, entity: str | None) -> dict[str, Any]:
    """The W&B Report as plain data: verdict table, heatmap, per-task metric panels grouped by variant."""
    bench = a.benchmark.replace("'", "")
    runset_report = {"type": "Runset", "project": project, "entity": entity or "", "name": "report",
                     "filters": f"JobType = 'report' and Group = '{bench}'"}
    lines = ["| variant | verdict | why | overall effect |", "|---|---|---|---|"]
    for v in a.order:
        verdict, why = a.verdicts[v]
        lines.append(f"| {v} | {verdict} | {why} | {fmt(a.overall[v], 3, True)} |")
    from .verdicts import VERDICT_RULE, call_rule

    blocks: list[dict[str, Any]] = [
        {"type": "H1", "text": "Verdicts"},
        {"type": "MarkdownBlock", "text": "\n".join(lines)},
        {"type": "MarkdownBlock", "text": f"**Rule per variant.** {VERDICT_RULE}\n\n"
                                          f"**Rule per task.** {call_rule(a.settings)}"},
        {"type": "PanelGrid", "runsets": [runset_report], "panels": [
            {"type": "WeavePanelSummaryTable", "table_name": "transfer_matrix"},
            *([{"type": "MediaBrowser", "title": "Transfer heatmap", "media_keys": [f"plots/{Path(figs.heatmap).stem}"]}]
              if figs.heatmap else []),
        ]},
        {"type": "H1", "text": "Metrics per task, grouped by variant"},
    ]
    tasks: dict[str, tuple[str, str]] = {}
    for c in a.comps:
        tasks.setdefault(c.cond.task, (c.cond.metric, c.cond.label))
    for task, (metric, _) in sorted(tasks.items()):
        runset = {"type": "Runset", "project": project, "entity": entity or "", "name": task,
                  "filters": f"Config('task') = '{task}' and Group = '{bench}'", "groupby": ["config.variant"]}
        blocks += [
            {"type": "H2", "text": task},
            {"type": "PanelGrid", "runsets": [runset], "panels": [
                {"type": "LinePlot", "title": f"{task}: {metric}", "x": "Step", "y": [metric],
                 "groupby": "config.variant"},
                {"type": "LinePlot", "title": f"{task}: train_loss", "x": "Step", "y": ["train_loss"],
                 "groupby": "config.variant"},
                {"type": "BarPlot", "title": f"{task}: final {metric}", "metrics": [metric],
                 "groupby": "config.variant", "orientation": "h"},
            ]},
        ]
    return {"api": "wandb_workspaces.reports.v2", "type": "Report", "project": project, "entity": entity or "",
            "title": f"Transfer report: {a.benchmark}"[:128],
            "description": "Does each modification's gain transfer across tasks? Generated by modtransfer.",
            "blocks": blocks}


def to_api(defn: Any) -> Any:
    """Turn a definition (or part of one) into ``wandb_workspaces.reports.v2`` objects; no network."""
    import wandb_workspaces.reports.v2 as wr

    if isinstance(defn, list):
        return [to_api(x) for x in defn]
    if isinstance(defn, dict) and "type" in defn:
        kwargs = {k: to_api(v) for k, v in defn.items() if k not in ("type", "api")}
        if defn["type"] == "Report" and not kwargs.get("entity"):
            kwargs.pop("entity", None)  # let the API pick the default entity
        return getattr(wr, defn["type"])(**kwargs)
    return defn


def write_report_definition(a: Analysis, figs: Figures, folder: Path, mode: str) -> dict[str, Any]:
    """Save the definition as ``wandb_report.json`` in ``folder``; online, also save it to W&B and print its URL."""
    project, entity = target(a)
    defn = report_definition(a, figs, project, entity)
    path = folder / "wandb_report.json"
    path.write_text(json.dumps(defn, indent=2), encoding="utf-8")
    if mode != "online":
        return defn
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        print("wandb-workspaces is not installed: the W&B Report is saved as JSON only (pip install wandb-workspaces)")
        return defn
    report = to_api(defn)
    report.save()
    defn["url"] = report.url
    path.write_text(json.dumps(defn, indent=2), encoding="utf-8")
    print(f"W&B report: {report.url}")
    return defn
