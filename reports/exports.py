"""Machine-readable exports of a report: per-cell values, the whole analysis as JSON, and a README.

``cells.csv``: one row per stored cell (every attempt of a seed, in finish order), with the fields
one needs to redo the analysis elsewhere. ``results.json``: the analysis (per comparison: n, Δ,
interval, p-values, call), the headline per variant (intersection-union test across tasks), verdicts,
what each task could call, the plan(s), implementations, versions, git commit and machine.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modtransfer.core.task_card import SIGN_CONVENTION

from .analysis import axis_keys, cond_key, conditions
from .cards import card
from .intervals import interval_note
from .marks import last_error_line
from .power import task_designs
from .records import BASELINE
from .summary import Analysis, transfer_table

FORMAT_VERSION = 1

CELL_COLUMNS = ["cell_id", "benchmark", "variant", "task", "condition", "seed", "size", "hparams", "implementation",
                "precision", "status", "primary_metric", "higher_is_better", "primary_value", "final_train_loss",
                "steps", "failed_step", "params", "flops_per_token", "tokens_per_s", "mfu", "train_s", "wall_s",
                "startup_s", "lr", "budget_steps", "batch_size", "git_commit", "torch", "device", "finished_at",
                "error"]


def _final_train_loss(row: dict[str, Any]) -> float | None:
    for point in reversed(row.get("curve") or []):
        x = point.get("train_loss")
        if isinstance(x, int | float) and math.isfinite(x):
            return float(x)
    return None


def cell_records(a: Analysis) -> tuple[list[str], list[dict[str, Any]]]:
    """Per stored cell: identity, condition label, outcome, cost and provenance; plus each final metric."""
    conds = conditions(a.rows)
    axes = axis_keys(a.rows)
    metric_names = sorted({k for r in a.rows for k in (r.get("metrics") or {})})
    out = []
    for r in a.rows:
        env, budget, spec = r.get("env") or {}, r.get("budget") or {}, r.get("spec") or {}
        rec = {k: r.get(k) for k in CELL_COLUMNS if k in r}
        rec.update({
            "condition": conds[cond_key(r, axes)].label, "hparams": json.dumps(r.get("hparams") or {}, sort_keys=True),
            "implementation": spec.get("implementation", "modtransfer"), "precision": env.get("precision", "fp32"),
            "final_train_loss": _final_train_loss(r), "lr": budget.get("lr"), "budget_steps": budget.get("steps"),
            "batch_size": budget.get("batch_size"), "git_commit": env.get("commit"),
            "torch": env.get("torch"), "device": env.get("device"), "error": last_error_line(r.get("error"), 500, ""),
            "higher_is_better": "true" if r.get("higher_is_better") else "false",
        })
        for m in metric_names:
            rec[f"metric:{m}"] = (r.get("metrics") or {}).get(m)
        out.append(rec)
    return CELL_COLUMNS + [f"metric:{m}" for m in metric_names], out


def write_cells_csv(a: Analysis, path: Path) -> None:
    columns, records = cell_records(a)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({k: "" if v is None else v for k, v in rec.items()})


def _clean(x: Any) -> Any:
    """JSON-safe: NaN and infinities become null, tuples lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _provenance(a: Analysis) -> dict[str, Any]:
    envs = [r.get("env") or {} for r in a.rows]
    keys = ("commit", "modtransfer", "torch", "lightning", "torchmetrics", "wandb", "python", "device", "gpu", "host",
            "platform", "threads", "precision")
    seen: dict[str, list[Any]] = {}
    for e in envs:
        for k in keys:
            if k in e and e[k] not in seen.setdefault(k, []):
                seen[k].append(e[k])
    return {"recorded_with_cells": {k: v[0] if len(v) == 1 else v for k, v in seen.items()},
            "report_machine": {"python": platform.python_version(), "platform": platform.platform(),
                               "processor": platform.processor() or platform.machine()}}


def results_dict(a: Analysis, run_dir: Path, folder: Path | None = None) -> dict[str, Any]:
    """Everything the report concludes, with what produced it; ``run_dir`` relative to the report
    ``folder`` when given (``compare`` resolves it from there), so the two can move together."""
    columns, rows = transfer_table(a)
    plans = a.meta.get("plans") if isinstance(a.meta.get("plans"), list) else ([a.plan] if a.plan else [])
    impls = sorted({(r.get("spec") or {}).get("implementation", "modtransfer") for r in a.rows})
    return _clean({
        "format_version": FORMAT_VERSION,
        "benchmark": a.benchmark,
        "run_dir": run_dir_from(folder, run_dir) if folder is not None else str(Path(run_dir).resolve()),
        "cells": len(a.rows),
        "baseline": BASELINE,
        "variants": list(a.order),
        "conditions": list(a.labels),
        "tasks": list(a.groups),
        "settings": {"alpha": a.settings.alpha, "level": a.settings.level, "correction": a.settings.correction,
                     "min_seeds": a.settings.min_seeds, "looks": a.settings.looks, "margins": a.settings.margins},
        "verdicts": {v: {"verdict": a.verdicts[v][0], "why": a.verdicts[v][1], "overall_effect": a.overall[v],
                         "overall_unit": a.effect_unit, "per_task": a.task_calls.get(v, {}), "cost": a.costs.get(v, {})}
                     for v in a.order},
        "headlines": {v: {"kind": h.kind, "why": h.why, "p": h.p, "q": h.q, "family": h.family,
                          "blockers": h.blockers, "left_out": h.left_out, "tasks": [asdict(t) for t in h.tests]}
                      for v, h in a.headlines.items()},
        "design": [asdict(d) for d in task_designs(a.comps, a.settings)],
        "comparisons": [{**dict(zip(columns, row, strict=True)), "per_seed": _per_seed(a, row[0], row[3])}
                        for row in rows],
        "sign_convention": SIGN_CONVENTION,
        "intervals": interval_note(a.comps, a.settings),
        "glossary": glossary(),
        "task_cards": {t: card(a.rows, t) for t in sorted({r["task"] for r in a.rows})},
        "noise_floor": a.noise_floor(),
        "agreement": {"mean_tau": a.agreement.mean_tau, "mean_ci": a.agreement.mean_ci,
                      "pairs": a.agreement.pairs},
        "implementations": impls,
        "plans": plans,
        "provenance": _provenance(a),
    })


def _per_seed(a: Analysis, variant: str, label: str) -> list[dict[str, Any]]:
    """One comparison's paired seeds: the baseline's and the variant's value and the improvement."""
    c = a.comp(variant, label)
    if c is None:
        return []
    return [{"seed": s, "baseline": b, "variant": b + d if c.cond.higher_is_better else b - d, "improvement": d}
            for s, b, d in zip(c.seeds, c.paired_baseline, c.diffs, strict=True)]


#: What every column of the exports (transfer.csv, results.json's comparisons) and every mark means.
GLOSSARY: dict[str, str] = {
    "metric": "the task's metric the comparison decides on (see task_cards for its data and protocol)",
    "unit": "the metric's unit in words (e.g. nats per character, BLEU 0-100)",
    "higher_is_better": "the metric's direction: true for BLEU, false for a loss or an error (true / false everywhere)",
    "diff": "the mean paired improvement over the same-seed baseline (sign_convention: positive = better), in unit",
    "interval_low": "low end of the interval the page draws for diff (interval says which kind)",
    "interval_high": "high end of the interval the page draws for diff",
    "interval": "FCR-adjusted (a call better/worse: Benjamini & Yekutieli 2005, level 1 - R alpha / m) or unadjusted "
                "(the plain t interval at the report's level)",
    "unadjusted_low": "low end of the unadjusted t interval of diff", "unadjusted_high": "its high end",
    "win_rate": "share of paired seeds where the variant did better; a description of the seeds, not a probability",
    "rel_change_pct": "diff in percent of the paired baseline mean (positive = better)",
    "std_effect": "diff over the baseline's seed SD (noise_sd)",
    "p_t": "paired t p-value of diff = 0 (sequential over the looks with adaptive seeds)",
    "p_t_adj": "p_t corrected across the benchmark (settings.correction)",
    "p_equiv": "TOST p-value of |diff| >= margin (small: shown to be within the margin)",
    "p_equiv_adj": "p_equiv corrected across the benchmark",
    "margin": "smallest effect of interest, in unit (margin_source: the task's declaration or the plan)",
    "per_seed": "each paired seed: the baseline's value, the variant's value and the improvement",
    "tokens_per_s_noisy": "throughput ratio varies by more than 10% across seeds: the machine's load, not the model",
    "call better": "better after correction (▲)", "call worse": "worse after correction (▼)",
    "call no change": "within ±margin after correction (=)", "call unclear": "neither (?)",
    "call unstable": "a variant cell diverged or failed (✗)", "call too few seeds": "fewer paired seeds than "
    "settings.min_seeds (…)", "call not learned": "the baseline did not beat the task's trivial score (○)",
    "call missing": "not run (—)", "mark †": "an unadjusted interval that excludes zero without a call",
}


def glossary() -> dict[str, str]:
    """:data:`GLOSSARY`, with the sign convention under its own key."""
    return {"sign_convention": SIGN_CONVENTION, **GLOSSARY}


def run_dir_from(folder: Path, run_dir: Path) -> str:
    """The run folder as a path relative to the report ``folder``."""
    return os.path.relpath(Path(run_dir).resolve(), Path(folder).resolve())


def write_results_json(a: Analysis, run_dir: Path, path: Path) -> None:
    """``results.json``, the run folder named relative to the report folder that holds it (a report is
    built in a sibling temporary folder of the same depth, so the relative path holds once it is moved)."""
    path.write_text(json.dumps(results_dict(a, run_dir, path.parent), indent=2, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")


FILES = [
    ("index.html", "the report as one self-contained page (figures embedded); open it in a browser"),
    ("report.md", "the same report in Markdown, figures as the PNG files beside it"),
    ("main_table.md / main_table.tex / main_table.csv", "the main results table (baseline first, variants by "
     "slot, mean ± seed SD per task with the call), as Markdown, LaTeX (booktabs, amssymb) and CSV"),
    ("transfer.csv", "one row per variant x task condition: paired improvement (diff, > 0 = better), the page's "
     "interval, p-values, margin, call, cost ratios (columns defined in results.json's glossary)"),
    ("cells.csv", "one row per stored cell (every attempt of every seed): status, final metrics, cost, provenance"),
    ("results.json", "the whole analysis (headlines, comparisons, verdicts, design, noise floor, agreement) with "
     "the plan(s), implementations, versions, git commit and machine"),
    ("*.png", "the figures (heatmap, forest plots, learning curves, ...), 150 dpi or more"),
    ("wandb_report.json", "the W&B Report definition, when the report was built with --wandb-report"),
]


def write_readme(folder: Path, a: Analysis, run_dir: Path) -> None:
    """The report folder's README (the run folder named relative to it)."""
    present = {p.name for p in folder.iterdir()}
    lines = [f"# Report of benchmark `{a.benchmark}`", "",
             f"Built from `{Path(run_dir_from(folder, run_dir)) / 'results.sqlite'}` ({len(a.rows)} cells) by "
             "`modtransfer report`. Rebuild it with the same command; nothing here is read back by the harness.", "",
             "| File | What it is |", "|---|---|"]
    for name, what in FILES:
        first = name.split(" / ")[0]
        if first.startswith("*") or first in present:
            lines.append(f"| `{name}` | {what} |")
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
