"""The top of the report: a one-sentence headline, the caveat banner, the main table, and the table of a
baseline-only sweep (one value per hyper-parameter setting)."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np

from .analysis import axis_keys, cond_key, conditions
from .doc import Block, Image, Para, Section, Table, TableCell
from .figures import Figures
from .headline import HEADLINE_RULE, Headline
from .power import POWER, headline_design, task_designs
from .records import BASELINE, usable
from .summary import Analysis, fmt, unit
from .table import MainTable, as_tables, mean_sd

VERDICT_WORDS = {"transfers": "transfer(s) (better everywhere)",
                 "task-specific": "task-specific (better on some task, worse on none)",
                 "mixed": "mixed (better on one task, worse on another)", "neutral": "neutral (no change everywhere)",
                 "hurts": "hurt(s) (worse on some task, better on none)", "unstable": "unstable",
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
    return (f"Does the gain transfer? Of {len(a.order)} variant(s) against `{BASELINE}` on {tasks} task(s) with "
            f"{_seed_span(a)} paired seed(s): " + ", ".join(parts) + ".")


def _task_cell(h: Headline) -> TableCell:
    """Per task of a headline: its status at level alpha, Δ in the metric's units and the p of the claim."""
    decided = h.kind.endswith("everywhere")
    parts = []
    for t in h.tests:
        status = h.claim if decided else t.status      # decided: every task passed the claim (maybe others too)
        claim = status if status in t.p else h.claim
        p = f", p({claim}) {fmt(t.p[claim], 2)}" if claim and math.isfinite(t.p[claim]) else ""
        parts.append(f"{t.label}: {status} (Δ {fmt(t.mean_diff, 3, signed=True)} {unit(t.metric, t.task)}{p})")
    return TableCell("; ".join(parts + [f"{x}: left out" for x in h.left_out]) or "—", "wrap")


def headline_blocks(a: Analysis) -> list[Block]:
    """The answer per variant: the intersection-union headline, its p and q, and what blocks it."""
    rows = []
    for v in a.order:
        h = a.headlines.get(v)
        if h is None:
            continue
        claim = h.claim if h.kind not in ("mixed", "unstable") else ""
        pq = f"{claim}: p {fmt(h.p[claim], 2)}, q {fmt(h.q[claim], 2)}" if claim else "—"
        rows.append([v, TableCell(h.kind, f"h-{h.kind.replace(' ', '-')}"), pq, _task_cell(h),
                     TableCell(h.why, "wrap")])
    corr = "Benjamini-Hochberg" if a.settings.correction == "bh" else "Holm"
    fam = max((h.family for h in a.headlines.values()), default=0)
    return [Table(["Variant", "Does the gain transfer?", "Claim: p (largest per task) · q (across variants)",
                   "Per task: status at α, Δ (+ = better), p", "Why"], rows, id="headline-table",
                  caption="The headline: one intersection-union test per variant across tasks"),
            Para(f"**Headline rule** (α = {a.settings.alpha}). " + HEADLINE_RULE + f" Families: {corr} across the "
                 f"{fam} variant(s) with a testable headline, separately for better, worse and no change; never "
                 "across tasks. The per-task calls further down are a different family (corrected across every "
                 "variant × task comparison), so a task's call can read unclear where its headline p passes.")]


def design_blocks(a: Analysis) -> list[Block]:
    """Per task: the smallest effect the run could call, where its noise figure comes from, the seeds needed."""
    designs = task_designs(a.comps, a.settings)
    rows = []
    for d in designs:
        u = unit(d.metric, d.task)
        need = str(d.seeds_needed) if d.seeds_needed else ("more than 200" if math.isfinite(d.sd_diff)
                                                            and math.isfinite(d.margin) else "unknown")
        det = (f"{fmt(d.detectable, 3)} {u}" if math.isfinite(d.detectable)
               else "— (fewer than 2 seeds)" if d.n < 2 else "— (no noise figure)")
        rows.append([d.group + ("" if d.learned else " (baseline did not learn)"),
                     f"{d.metric} ({'↑' if d.higher_is_better else '↓'})", str(d.n),
                     TableCell(f"{fmt(d.sd_diff, 3)} {u} ({d.sd_text})", "wrap"), det,
                     f"{fmt(d.margin, 3)} {u} ({d.margin_source})", need])
    pct = int(POWER * 100)
    power, need_all = headline_design(designs, a.settings.alpha)
    text = (f"**Smallest callable effect**: the true mean paired difference (either sign) that the paired t test at "
            f"α = {a.settings.alpha}, two-sided, the level at which the headline tests each task, finds with "
            f"{pct}% power at the seeds the task has (Cohen 1988); smaller real effects are missed more often than "
            f"found. **Seeds for a one-margin effect**: paired seeds at which a difference of one margin reaches "
            f"{pct}% power. The per-task calls are corrected across comparisons as well and need larger effects.")
    if math.isfinite(power):
        text += (f" A variant one margin better on every learned task would be declared better everywhere with "
                 f"probability {power:.2f} at these seeds (the product over tasks, one variant alone); "
                 + (f"{need_all} seeds on every task would give {pct}%." if need_all else
                    f"more than 200 seeds would be needed for {pct}%."))
    if a.settings.looks:
        text += " With adaptive seeds each look spends part of α, so these fixed-design figures are optimistic."
    return [Table(["Task", "Metric", "Paired seeds", "SD of paired differences (source)",
                   f"Smallest callable effect ({pct}% power)", "Margin", "Seeds for a one-margin effect"], rows,
                  id="design-table", caption="What this run could call, per task"), Para(text)]


def front_blocks(a: Analysis) -> list[Block]:
    """The first screen after the banner: the headline per variant, then what the design could call."""
    if not a.comps:
        return []
    return (headline_blocks(a) if a.order else []) + design_blocks(a)


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
