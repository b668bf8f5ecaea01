"""Push a report to Weights & Biases: one run of job type "report", and optionally a W&B Report.

The run (offline by default) carries the transfer matrix as a ``wandb.Table``, every figure as
a ``wandb.Image`` and each variant's verdict as a summary value. Its id is fixed by the run
folder and the report's output folder (:func:`report_run_id`), so building the report again
replaces that run instead of adding one: older local folders of the id are removed before it
logs (offline, ``RUN_DIR/wandb`` then holds exactly one report run per report folder; online,
W&B resumes the same run). Its group is the cells' group (benchmark + run folder id), so the
report and its cells stay together and apart from any other run folder of the same benchmark.

The W&B Report is first built as plain JSON (the shape of the ``wandb-workspaces`` reports API,
``wandb_workspaces.reports.v2``: one dict per block or panel with its class name under "type"),
so it can be saved and checked without network; only in online mode is it turned into API
objects and saved. Its charts plot on ``trainer/global_step``, group each task's runs by
variant with the seeds' standard error as the band, and draw the baseline in black.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from modtransfer.core.task_card import SIGN_CONVENTION
from modtransfer.run.envinfo import portable_path
from modtransfer.run.wandb_folders import RUN_UID_KEY, remove_local_runs, wandb_env_for, wandb_group

from .cards import metric_key, unit
from .figures import Figures
from .summary import Analysis, fmt, transfer_table

#: the x axis of the cells' charts (the trainer's optimiser step; see ``modtransfer.run.cell.WANDB_STEP``)
STEP = "trainer/global_step"
#: how a variant's seeds are drawn: their mean, with the standard error of the mean as the band
AGG, BAND = "mean", "stderr"
BASELINE_COLOR = "#000000"
#: Notes for the user (the CLI shows them): where the W&B Report went, or why it stayed local.
log = logging.getLogger(__name__)


def target(a: Analysis) -> tuple[str, str | None]:
    """(project, entity): the plan's ``wandb`` block, else $WANDB_PROJECT / $WANDB_ENTITY, else "modtransfer"."""
    w = a.plan.get("wandb") if isinstance(a.plan.get("wandb"), dict) else {}
    project = w.get("project") or os.environ.get("WANDB_PROJECT") or "modtransfer"
    entity = w.get("entity") or os.environ.get("WANDB_ENTITY") or None
    return str(project), (str(entity) if entity else None)


def group_of(a: Analysis) -> str:
    """The W&B group of the run folder's runs (cells and report): benchmark + run folder id."""
    uid = a.meta.get(RUN_UID_KEY)
    return wandb_group(a.benchmark, str(uid) if uid else None)


def report_run_id(a: Analysis, out: Path) -> str:
    """The report run's id: the same for the same run folder and report folder, so a rebuild replaces it."""
    uid = a.meta.get(RUN_UID_KEY) or a.benchmark
    key = f"{uid}\n{Path(out).resolve()}"
    return "report-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def log_run(a: Analysis, folder: Path, figs: Figures, run_dir: Path, mode: str,
            out: Path | None = None) -> dict[str, Any] | None:
    """Log the report to its W&B run (W&B folders in ``run_dir/wandb``); returns id, project, entity,
    folder and URL (online only). ``out``: the report's final folder, which names the run
    (default ``run_dir/report``); ``folder``: where the figures are now."""
    if mode == "disabled":
        return None
    if mode not in ("offline", "online"):
        raise ValueError(f"wandb_mode must be 'offline', 'online' or 'disabled', got {mode!r}")
    import wandb

    project, entity = target(a)
    run_id = report_run_id(a, out if out is not None else Path(run_dir) / "report")
    with wandb_env_for(run_dir, mode) as root:
        remove_local_runs(run_dir, run_id)
        settings = wandb.Settings(console="off", disable_git=True, save_code=False, x_disable_stats=True, silent=True)
        run = wandb.init(project=project, entity=entity, id=run_id, resume="allow", group=group_of(a),
                         job_type="report", name=f"report {a.benchmark}", mode=mode, dir=str(root), settings=settings,
                         config={"benchmark": a.benchmark, "stats": {k: v for k, v in vars(a.settings).items()
                                                                     if k != "tasks"},
                                 "tasks": a.settings.tasks, "plan": a.plan},
                         reinit="create_new")
        try:
            run.log(_payload(a, folder, figs))
            for v in a.order:
                run.summary[f"verdict/{v}"] = a.verdicts[v][0]
            if math.isfinite(a.agreement.mean_tau):
                run.summary["agreement/mean_kendall_tau"] = a.agreement.mean_tau
            info = {"id": run.id, "project": project, "entity": entity, "dir": portable_path(Path(run.dir).parent),
                    "url": run.url if mode == "online" else None}
        finally:
            run.finish()
    return info


def _payload(a: Analysis, folder: Path, figs: Figures) -> dict[str, Any]:
    """The report run's one history row: transfer matrix and verdicts as tables, every figure as an image."""
    import wandb

    columns, records = transfer_table(a)
    payload: dict[str, Any] = {
        "transfer_matrix": wandb.Table(columns=columns, data=records),
        "verdicts": wandb.Table(columns=["variant", "verdict", "why", "overall_effect_sd"],
                                data=[[v, *a.verdicts[v], a.overall[v] if math.isfinite(a.overall[v]) else None]
                                      for v in a.order]),
    }
    payload["effects"] = wandb.Table(columns=EFFECT_COLUMNS, data=effect_rows(a))
    for f in figs.all():
        payload[media_key(f)] = wandb.Image(str(folder / f))
    return payload


#: The report run's ``effects`` table: one row per comparison, the improvement with the page's interval.
EFFECT_COLUMNS = ["variant", "task", "metric", "unit", "improvement", "interval_low", "interval_high",
                  "interval", "call", "paired_seeds"]


def effect_rows(a: Analysis) -> list[list[Any]]:
    """Each comparison's mean paired improvement (positive = better) with the interval the page draws."""
    from .intervals import shown_interval

    out = []
    for c in a.comps:
        lo, hi, kind = shown_interval(a, c)
        out.append([c.variant, c.cond.label, c.cond.metric, unit(a.rows, c.cond.task, c.cond.metric),
                    _num(c.mean_diff), _num(lo), _num(hi), kind, c.call, c.n_used or c.n])
    return out


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def media_key(file: str) -> str:
    """The key a figure is logged under in the report run (and shown by the Report's media panels)."""
    return f"plots/{Path(file).stem}"


def _report_panels(a: Analysis, figs: Figures, folder: Path, runset: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocks of the report run: verdicts, rules, the main table, the heatmap and the forest plots."""
    from .verdicts import VERDICT_RULE, call_rule

    lines = ["| variant | verdict | why | overall effect |", "|---|---|---|---|"]
    for v in a.order:
        verdict, why = a.verdicts[v]
        lines.append(f"| {v} | {verdict} | {why} | {fmt(a.overall[v], 3, True)} |")
    blocks: list[dict[str, Any]] = [
        {"type": "H1", "text": "Verdicts"},
        {"type": "MarkdownBlock", "text": "\n".join(lines)},
        {"type": "MarkdownBlock", "text": f"**Rule per variant.** {VERDICT_RULE}\n\n"
                                          f"**Rule per task.** {call_rule(a.settings)}"},
    ]
    table = Path(folder) / "main_table.md"
    if table.is_file():
        blocks += [{"type": "H1", "text": "Main results"},
                   {"type": "MarkdownBlock", "text": table.read_text(encoding="utf-8")}]
    panels: list[dict[str, Any]] = [{"type": "WeavePanelSummaryTable", "table_name": "transfer_matrix"},
                                    {"type": "WeavePanelSummaryTable", "table_name": "effects"}]
    if figs.heatmap:
        panels.append({"type": "MediaBrowser", "title": "Transfer heatmap", "media_keys": [media_key(figs.heatmap)]})
    if figs.forest:
        panels.append({"type": "MediaBrowser", "title": "Forest plots: effect per variant with its interval",
                       "media_keys": [media_key(f) for f in figs.forest.values()]})
    return [*blocks, {"type": "PanelGrid", "runsets": [runset], "panels": panels}]


def _task_grid(task: str, keys: dict[str, str], group: str, project: str, entity: str | None) -> dict[str, Any]:
    """One task's runs grouped by variant (one line per variant, the baseline in black): the decision
    metric and the training loss on the trainer's step (mean over seeds, standard error band), and the
    paired improvement over the same-seed baseline as bars (positive = better). ``keys``: the W&B keys,
    with their units, of ``metric``, ``train_loss`` and ``paired``."""
    runset = {"type": "Runset", "project": project, "entity": entity or "", "name": task,
              "filters": f"Config('task') = '{task}' and Group = '{group}'", "groupby": ["config.variant"]}
    by = {"groupby": "config.variant", "groupby_aggfunc": AGG, "groupby_rangefunc": BAND}
    baseline = {"type": "RunsetGroup", "runset_name": task,
                "keys": [{"type": "RunsetGroupKey", "key": {"type": "Config", "name": "variant"}, "value": "baseline"}]}
    return {"type": "PanelGrid", "runsets": [runset],
            "custom_run_colors": [{"group": baseline, "color": BASELINE_COLOR}],
            "panels": [
                {"type": "LinePlot", "title": keys["metric"], "x": STEP, "y": [keys["metric"]], **by},
                {"type": "LinePlot", "title": keys["train_loss"], "x": STEP, "y": [keys["train_loss"]], **by},
                {"type": "BarPlot", "title": f"{keys['paired']} (paired over seeds; > 0 = better)",
                 "metrics": [keys["paired"]], "orientation": "h", **by},
            ]}


def task_keys(a: Analysis) -> dict[str, dict[str, str]]:
    """Task -> the W&B keys (with units) of its decision metric, its training loss and its paired improvement."""
    out: dict[str, dict[str, str]] = {}
    for c in a.comps:
        if c.cond.task not in out:
            key = metric_key(a.rows, c.cond.task, c.cond.metric)
            task, name = key.split("/", 1) if "/" in key else (c.cond.task, key)
            out[c.cond.task] = {"metric": key, "train_loss": metric_key(a.rows, c.cond.task, "train_loss"),
                                "paired": f"{task}/paired_improvement_{name}"}
    return out


def report_definition(a: Analysis, figs: Figures, project: str, entity: str | None,
                      folder: Path | None = None) -> dict[str, Any]:
    """The W&B Report as plain data: verdicts, main table (``folder/main_table.md`` if there), heatmap,
    forest plots, and per task its metrics on ``trainer/global_step`` grouped by variant."""
    group = group_of(a).replace("'", "")
    runset_report = {"type": "Runset", "project": project, "entity": entity or "", "name": "report",
                     "filters": f"JobType = 'report' and Group = '{group}'"}
    blocks = _report_panels(a, figs, Path(folder) if folder else Path("."), runset_report)
    blocks.append({"type": "H1", "text": "Metrics per task, one line per variant (baseline in black; band: "
                                         "standard error over seeds)"})
    blocks.append({"type": "MarkdownBlock", "text": f"Sign convention: {SIGN_CONVENTION}. The bars are the mean "
                   "paired improvement over the seeds with its standard error; the intervals the calls rest on "
                   "are in the forest plots and the `effects` table above."})
    for task, keys in sorted(task_keys(a).items()):
        blocks += [{"type": "H2", "text": task}, _task_grid(task.replace("'", ""), keys, group, project, entity)]
    return {"api": "wandb_workspaces.reports.v2", "type": "Report", "project": project, "entity": entity or "",
            "title": f"Transfer report: {a.benchmark}"[:128],
            "description": "Does each modification's gain transfer across tasks? Generated by modtransfer.",
            "blocks": blocks}


def to_api(defn: Any) -> Any:
    """Turn a definition (or part of one) into ``wandb_workspaces.reports.v2`` objects; no network.

    ``custom_run_colors`` is stored as a list of ``{"group": RunsetGroup, "color": ...}`` (JSON
    keys cannot be objects) and becomes the API's dict keyed by ``RunsetGroup``.
    """
    import wandb_workspaces.reports.v2 as wr

    if isinstance(defn, list):
        return [to_api(x) for x in defn]
    if isinstance(defn, dict) and "type" in defn:
        kwargs = {k: to_api(v) for k, v in defn.items() if k not in ("type", "api", "custom_run_colors")}
        if "custom_run_colors" in defn:
            kwargs["custom_run_colors"] = {to_api(c["group"]): c["color"] for c in defn["custom_run_colors"]}
        if defn["type"] == "RunsetGroup":
            kwargs["keys"] = tuple(kwargs["keys"])
        if defn["type"] == "Report" and not kwargs.get("entity"):
            kwargs.pop("entity", None)  # let the API pick the default entity
        return getattr(wr, defn["type"])(**kwargs)
    return defn


def write_report_definition(a: Analysis, figs: Figures, folder: Path, mode: str) -> dict[str, Any]:
    """Save the definition as ``wandb_report.json`` in ``folder``; online, also save it to W&B: its URL is under
    "url" in the returned definition (and logged for the CLI to show)."""
    project, entity = target(a)
    defn = report_definition(a, figs, project, entity, folder)
    path = folder / "wandb_report.json"
    path.write_text(json.dumps(defn, indent=2), encoding="utf-8")
    if mode != "online":
        return defn
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        log.warning("wandb-workspaces is not installed: the W&B Report is saved as JSON only "
                    "(pip install wandb-workspaces)")
        return defn
    report = to_api(defn)
    report.save()
    defn["url"] = report.url
    path.write_text(json.dumps(defn, indent=2), encoding="utf-8")
    log.info("W&B report: %s", report.url)
    return defn
