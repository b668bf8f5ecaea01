"""The top of the report: a one-sentence headline, the caveat banner, the main table, and the table of a
baseline-only sweep (one value per hyper-parameter setting)."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np

from .analysis import BASELINE, axis_keys, cond_key, conditions, usable
from .doc import Image, Para, Section, Table, TableCell
from .figures import Figures
from .summary import Analysis
from .table import MainTable, as_tables, mean_sd

VERDICT_WORDS = {"transfers": "transfer(s) (better on every learned task)", "task-specific": "task-specific",
                 "mixed": "mixed", "neutral": "neutral (no change)", "hurts": "hurt(s)", "unstable": "unstable",
                 "inconclusive": "inconclusive"}


def _seed_span(a: Analysis) -> str:
    ns = sorted({c.n for c in a.comps})
    if not ns:
        per = Counter((r["task"], json.dumps(r.get("hparams") or {}, sort_keys=True)) for r in a.rows
                      if r["variant"] == BASELINE)
        ns = sorted(set(per.values())) or [0]
    return f"{ns[0]}" if ns[0] == ns[-1] else f"{ns[0]}–{ns[-1]}"


def headline(a: Analysis) -> str:
    """One sentence: what the benchmark found, and on how much evidence."""
    tasks = len(a.groups)
    if not a.order:
        settings = len({json.dumps(r.get("hparams") or {}, sort_keys=True) for r in a.rows})
        return (f"Baseline-only study: `{BASELINE}` on {tasks} task(s) in {settings} hyper-parameter setting(s), "
                f"{_seed_span(a)} seed(s) each; no variant is compared.")
    counts = Counter(a.verdicts[v][0] for v in a.order)
    parts = [f"{n} {VERDICT_WORDS.get(k, k)}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return (f"Of {len(a.order)} variant(s) against `{BASELINE}` on {tasks} task(s) with {_seed_span(a)} paired "
            f"seed(s): " + ", ".join(parts) + ".")


def caveats(a: Analysis) -> list[str]:
    """The banner: what limits every number below (seeds, budget, tasks whose baseline did not learn)."""
    out = []
    if a.too_few_seeds():
        k = a.settings.min_seeds
        out.append(f"**Too few seeds**: some comparisons have {a.min_seeds()} paired seed(s); a call needs at least "
                   f"{k}. Their numbers are shown without a call. Rerun with `seeds: {max(k, 6)}` or "
                   f"`seeds: {{min: {k}, max: 12}}`.")
    bad = sorted({c.cond.label for c in a.comps if c.gate.status == "not learned"})
    if bad:
        out.append(f"**Baseline did not learn** {', '.join(bad)}: no call there, and these are left out of every "
                   "verdict and ranking (see Noise floor and margins).")
    budgets: dict[str, set[str]] = {}
    for r in a.rows:
        b = r.get("budget") or {}
        text = f"{b['steps']} steps" if "steps" in b else "default steps"
        budgets.setdefault(r["task"], set()).add(text + (f", batch {b['batch_size']}" if "batch_size" in b else ""))
    size = ", ".join(sorted({r["size"] for r in a.rows}))
    precisions = sorted({str((r.get("env") or {}).get("precision", "fp32")) for r in a.rows})
    size += f", precision {' / '.join(precisions)}"
    out.append("**Budget**: " + "; ".join(f"{t}: {' / '.join(sorted(s))}" for t, s in sorted(budgets.items()))
               + f" at size {size}. Small-scale results: a call here need not hold at the paper's scale.")
    return out


def main_section(a: Analysis, table: MainTable) -> Section:
    s = Section("Main results", "main-table")
    s.blocks.extend(as_tables(table))
    cost = (f" Params, FLOPs per token and steps/s are the model's on {table.cost_label}." if len(table.labels) > 1
            else "")
    s.blocks.append(Para("Layout of Narang et al. 2021, Table 1: the baseline first, then the variants grouped by the "
                         "slot they change (best overall first within a slot). Each number is that model's own mean "
                         "final score over its seeds ± the seed SD; the mark after it is the call against the "
                         f"baseline on paired seeds (rules under Verdicts).{cost} Exports: `main_table.tex` "
                         "(booktabs), `main_table.csv`, `main_table.md`."))
    return s


def _setting(hp: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hp.items())) or "(default)"


def sweep_rows(a: Analysis) -> list[dict[str, Any]]:
    """Per task condition of the baseline: its hyper-parameter setting's mean, SD, seeds and failures."""
    conds = conditions(a.rows)
    axes = axis_keys(a.rows)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in a.rows:
        if r["variant"] == BASELINE:
            groups.setdefault(conds[cond_key(r, axes)].label, []).append(r)
    out = []
    for cond in conds.values():
        rows = list({r["seed"]: r for r in groups.get(cond.label, [])}.values())
        if not rows:
            continue
        vals = [r["primary_value"] for r in rows if usable(r)]
        out.append({"group": cond.group, "setting": _setting(cond.hparams), "metric": cond.metric,
                    "higher_is_better": cond.higher_is_better, "seeds": len(rows), "failed": len(rows) - len(vals),
                    "mean": float(np.mean(vals)) if vals else math.nan,
                    "sd": float(np.std(vals, ddof=1)) if len(vals) >= 2 else math.nan})
    return out


def sweep_section(a: Analysis, figs: Figures) -> Section | None:
    """A baseline-only sweep (or any plan with hyper-parameter axes and no variant): one value per setting."""
    rows = sweep_rows(a)
    if len({r["setting"] for r in rows}) < 2:
        return None
    s = Section("Baseline per hyper-parameter setting", "sweep")
    best: dict[str, float] = {}
    for r in rows:
        if math.isfinite(r["mean"]):
            sign = 1 if r["higher_is_better"] else -1
            best[r["group"]] = max(best.get(r["group"], -math.inf), sign * r["mean"])
    body = []
    for r in rows:
        sign = 1 if r["higher_is_better"] else -1
        top = math.isfinite(r["mean"]) and sign * r["mean"] == best.get(r["group"])
        text = mean_sd(r["mean"], r["sd"])
        body.append([r["group"], r["setting"], f"{r['metric']} ({'↑' if r['higher_is_better'] else '↓'})",
                     TableCell(f"**{text}**" if top else text), str(r["seeds"]), str(r["failed"])])
    s.blocks.append(Table(["Task", "Setting", "Metric", "Mean ± seed SD", "Seeds", "Failed"], body, id="sweep-table",
                          caption="The baseline's final score per setting; bold: the best mean of its task"))
    s.blocks.append(Para("The best mean is bolded for orientation only: settings are not tested against each other "
                         "here; overlapping ± SD ranges mean the seeds cannot separate them."))
    for task, f in getattr(figs, "sweep", {}).items():
        s.blocks.append(Image(f, f"Baseline metric per setting, {task}", f"{task}: the baseline's mean final score "
                              "per hyper-parameter setting."))
    return s
