"""The report's general sections (verdicts, noise, effects, curves, agreement, cost, problems, reproducibility),
built from an :class:`Analysis` and its figures; their order is in :mod:`.page`."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from .agreement import MIN_DISTINCT_RESAMPLES, distinct_resamples, fewest_seeds_for_interval
from .doc import Bullets, Image, Para, Pre, Section, Table, TableCell
from .figures import Figures
from .intervals import excludes_zero_uncalled, interval_note, shown_interval
from .marks import call_cell, ci_text, last_error_line, ratio
from .records import BASELINE
from .summary import Analysis, fmt
from .table import mean_of
from .verdicts import VERDICT_RULE, call_rule


def noise_section(a: Analysis) -> Section:
    """Per condition: the margin each call was judged against and the baseline's seed noise."""
    s = Section("Noise floor and margins", "noise")
    rows = []
    for r in a.noise_floor():
        rows.append([r["condition"], r["metric"], f"{fmt(r['margin'], 3)} ({r['margin_source']})",
                     f"{fmt(r['noise_sd'], 3)} ({r['noise_source']})", str(r["baseline_seeds"]),
                     call_cell("not learned") if r["gate"] == "not learned" else r["gate"],
                     TableCell(r["gate_text"], "wrap")])
    s.blocks.append(Table(["Task", "Metric", "Margin (smallest effect of interest)", "Baseline seed SD",
                           "Baseline seeds", "Baseline learned?", "Against the trivial score"], rows,
                          id="noise-table", caption="What a call is judged against, in each metric's own units"))
    s.blocks.append(Para("The margin is declared by the task (or set in the plan under `margins:`) in the metric's "
                         "units; **no change** means the interval of Δ is shown to lie inside ± margin. The seed SD "
                         "is measured from this store's baseline cells when it has two or more, otherwise the "
                         "figure the task declares for its default budget."))
    return s


def verdict_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Verdicts", "verdicts")
    headers = ["Variant", "Verdict", "Why", f"Overall effect ({a.effect_unit})", *a.groups,
               "Params ×", "FLOPs/token ×", "Tokens/s ×"]
    rows = []
    for v in a.order:
        verdict, why = a.verdicts[v]
        cells: list[str | TableCell] = [v, TableCell(verdict, f"v-{verdict}"), TableCell(why, "wrap"),
                                   fmt(a.overall[v], 3, signed=True)]
        for g in a.groups:
            tc = a.task_calls[v].get(g)
            cells.append(call_cell(tc) if tc else TableCell("— not run", "c-missing"))
        cost = a.costs.get(v, {})
        noisy = any(c.cost_noisy.get("tokens_per_s") for c in a.comps if c.variant == v)
        cells += [ratio(cost.get("params", math.nan)), ratio(cost.get("flops_per_token", math.nan)),
                  ratio(cost.get("tokens_per_s", math.nan)) + (" (noisy)" if noisy else "")]
        rows.append(cells)
    s.blocks.append(Table(headers, rows, id="verdict-table", caption="One verdict per variant, best overall first"))
    s.blocks.append(Para("**Rule per variant.** " + VERDICT_RULE))
    s.blocks.append(Para("**Rule per task.** " + call_rule(a.settings)))
    notes = []
    n_max = a.seeds()
    if 0 < n_max < a.settings.min_seeds:
        notes.append(f"Every comparison has at most {n_max} paired seed(s): no call is made (see the warning above).")
    no_base = sorted({c.cond.label for c in a.comps if not c.baseline_values})
    if no_base:
        notes.append(f"No usable `{BASELINE}` cell for: {', '.join(no_base)}; nothing there can be compared.")
    bad_base = {c.cond.label: c.n_baseline_bad for c in a.comps if c.n_baseline_bad}
    if bad_base:
        notes.append(f"`{BASELINE}` cells without a usable value (diverged, failed or timed out), whose seeds stay "
                     "unpaired: " + ", ".join(f"{k}: {n}" for k, n in sorted(bad_base.items())) + ".")
    timeouts = sum(c.n_timeout for c in a.comps)
    if timeouts:
        notes.append(f"{timeouts} variant cell(s) timed out: their seeds are left out of the pairs (not counted as "
                     "unstable); see Skipped and failed cells.")
    if not a.order:
        notes.append(f"The store holds no variant besides `{BASELINE}`: there is nothing to compare.")
    fam = sum(c.p_adjusted is not None for c in a.comps)
    corr = "Benjamini-Hochberg" if a.settings.correction == "bh" else "Holm"
    if fam:
        notes.append(f"Multiple comparisons: {corr} over the {fam} tested variant × task comparison(s) (and "
                     "separately over their equivalence tests).")
    else:
        notes.append("No comparison could be tested (too few paired seeds, or no learned baseline), so no p-value "
                     "was corrected and no call was made.")
    if any(c.cost_noisy.get("tokens_per_s") for c in a.comps):
        notes.append("Tokens/s × marked (noisy): the per-seed throughput ratio varies by more than "
                     "10% across seeds (machine load), or an arm was timed once (stacked seeds share one "
                     "timing, so its noise is unknown): read it as a rough figure.")
    notes.append(f"Ordered by overall effect: the mean over the tasks whose baseline learned of Δ in {a.effect_unit} "
                 "(each task's own seed noise), one unit for every metric.")
    s.blocks.append(Bullets(notes))
    if figs.heatmap:
        s.blocks.append(Image(figs.heatmap, "Transfer heatmap: variants by tasks, colour = effect",
                              f"Colour and number: effect in {a.effect_unit} (blue = better). * = better/worse after correction, "
                              "= = no change, ✗ = unstable, ○ = baseline did not learn."))
    return s


def _interval_text(a: Analysis, c: Any) -> str:
    """The interval the page draws for ``c``: FCR-adjusted (a call) or unadjusted, † when it excludes 0 uncalled."""
    lo, hi, kind = shown_interval(a, c)
    if not math.isfinite(lo):
        return ci_text(None, c.n)
    mark = " †" if excludes_zero_uncalled(c) else ""
    return f"{ci_text((lo, hi), c.n)} {kind}{mark}"


def effects_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Effects per task", "effects")
    headers = ["Variant", "Task · metric", "Call", "n", "Baseline mean ± SD", "Δ improvement (+ = better)",
               "Interval of Δ", "Effect (SDs)", "Win rate", "p adj.", "p equiv. adj.", "Diverged"]
    rows = []
    for v in a.order:
        for lab in a.labels:
            c = a.comp(v, lab)
            if c is None:
                continue
            n = str(c.n) if c.n_used in (0, c.n) else f"{c.n_used} of {c.n}"
            rows.append([v, TableCell(f"{lab} · {c.cond.metric} {'↑' if c.cond.higher_is_better else '↓'}", "wrap"),
                         call_cell(c.call), n, f"{fmt(c.baseline_mean, 4)} ± {fmt(c.baseline_std, 2)}",
                         fmt(c.mean_diff, 3, True), _interval_text(a, c), fmt(c.std_effect, 3, True),
                         fmt(c.p_improve, 2), fmt(c.p_adjusted, 2), fmt(c.p_equiv_adjusted, 2),
                         f"{c.n_diverged}/{c.n_variant_cells}" if c.n_diverged else "0"])
    s.blocks.append(Table(headers, rows, id="effects-table",
                          caption="Paired differences with the baseline (same seeds, same hyper-parameters)"))
    s.blocks.append(Para(interval_note(a.comps, a.settings)))
    s.blocks.append(Para("Δ is the mean over paired seeds of the improvement over the baseline: baseline − variant "
                         "for a metric where lower is better (↓), variant − baseline where higher is better (↑); "
                         "positive is better, in the metric's unit (see Tasks). Effect (SDs) is Δ over the baseline's "
                         "seed-to-seed standard deviation. Win rate: the share of paired seeds on which the variant did "
                         "better (a description of the seeds, not a probability of improvement). p adj.: two-sided "
                         "paired t test (sequential over the looks with adaptive seeds), corrected across tests; "
                         "p equiv. adj.: TOST against ± margin, corrected. Each variant's own mean and the task's margin are in the main "
                         "table and the noise section; the uncorrected p and the exact sign-flip p (a distribution-free "
                         "check, not used for calls) are in `transfer.csv`. n: paired seeds (used of "
                         "available when a round of adaptive seeds is incomplete). Diverged: diverged cells of the "
                         "variant, a failure rate never averaged into a mean."))
    for lab, f in figs.forest.items():
        s.blocks.append(Image(f, f"Forest plot for {lab}", f"{lab}: mean paired difference and "
                              f"{int(a.settings.level * 100)}% paired t interval; circles = single seeds; grey band "
                              "= ± the task's margin; blue = better, vermillion = worse."))
    return s


def curves_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Learning curves", "curves")
    if not figs.curves:
        s.blocks.append(Para("No learning curves were recorded."))
    for lab, f in figs.curves.items():
        s.blocks.append(Image(f, f"Learning curves for {lab}", f"{lab}: training loss (top) and validation "
                              "metric (below); line = mean over seeds, band or bar = min–max over seeds; baseline dashed "
                              "grey; log scale where the axis says so" + ("." if a.order else "; one panel per "
                                                                           "hyper-parameter setting.")))
    return s


def agreement_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Agreement between tasks", "agreement")
    g = a.agreement
    if not g.pairs:
        s.blocks.append(Para("Agreement needs at least two tasks and two variants."))
        return s
    pct = int(a.settings.level * 100)
    if figs.agreement:
        s.blocks.append(Image(figs.agreement, "Task agreement matrix (Kendall tau)",
                              "Kendall tau-b between tasks' rankings of the variants by mean paired difference; [ ] = "
                              "bootstrap interval, where there are enough distinct resamples."))
    rows = [[p["a"], p["b"], str(p["n_variants"]), fmt(p["tau"], 2, True),
             ci_text(p["ci"], 2) if p["ci"] else f"omitted ({p['distinct_resamples']} distinct resamples)"]
            for p in g.pairs]
    s.blocks.append(Table(["Task A", "Task B", "Variants", "Kendall tau", f"{pct}% bootstrap interval"],
                          rows, id="agreement-table"))
    mean_ci = f" (bootstrap {pct}% interval {ci_text(g.mean_ci, 2)})" if g.mean_ci else ""
    across = any(p["across"] for p in g.pairs) and not all(p["across"] for p in g.pairs)
    which = " over pairs of different tasks" if across else ""
    few = min(p["n_variants"] for p in g.pairs)
    items = [f"Mean pairwise Kendall tau{which}: **{fmt(g.mean_tau, 2, True)}**{mean_ci}.",
             f"Leave-one-task-out: the mean ranking on the other tasks predicts the held-out task's ranking with "
             f"mean tau **{fmt(g.loo_mean, 3, True)}** (" +
             ", ".join(f"{k}: {fmt(t, 2, True)}" for k, t in g.loo.items()) + ")."]
    if few < 8:
        items.insert(0, f"**Caveat: only {few} variant(s) are ranked.** With k variants tau moves in steps of "
                        f"2/(k(k-1)/2) = {4 / (few * (few - 1)) if few > 1 else float('nan'):.2g}; one swapped pair "
                        "changes it by that much, so read it as a direction, not a measurement"
                        + (", and look at its interval." if g.mean_ci else "."))
    if g.seeds_note:
        items.append(g.seeds_note[0].upper() + g.seeds_note[1:] + ".")
    items.append("Intervals: paired bootstrap over seeds, the same seed draw for every variant of a task. Rule: "
                 "n seeds allow only C(2n−1, n) distinct resamples ("
                 + ", ".join(f"{n} seeds: {distinct_resamples(n)}" for n in (3, 4, 5)) + "), so an interval "
                 f"is shown only when each task of the pair has at least {MIN_DISTINCT_RESAMPLES} "
                 f"({fewest_seeds_for_interval()} or more seeds); otherwise it is omitted, not drawn from a "
                 "handful of repeated resamples.")
    s.blocks.append(Bullets(items))
    return s


def cost_section(a: Analysis) -> Section:
    s = Section("Cost next to benefit", "cost")
    rows = []
    for v in a.order:
        cost = a.costs.get(v, {})
        verdict, _ = a.verdicts[v]
        rows.append([v, TableCell(verdict, f"v-{verdict}"), fmt(a.overall[v], 3, True),
                     ratio(cost.get("params", math.nan)), ratio(cost.get("flops_per_token", math.nan)),
                     ratio(cost.get("tokens_per_s", math.nan))])
    s.blocks.append(Table(["Variant", "Verdict", f"Overall effect ({a.effect_unit})", "Params ×", "FLOPs/token ×",
                           "Tokens/s ×"], rows, id="cost-table",
                          caption="Cost relative to the baseline (geometric mean over tasks; > 1 = more)"))
    base = []
    for lab in a.labels:
        brows = [r for r in a.rows if r["variant"] == BASELINE and r["status"] == "done" and _lab(a, r) == lab]
        if brows:
            base.append(f"{lab}: baseline {_big(mean_of(brows, 'params'))} parameters, "
                        f"{_big(mean_of(brows, 'flops_per_token'))} FLOPs/token, "
                        f"{_big(mean_of(brows, 'tokens_per_s'))} tokens/s")
    if base:
        s.blocks.append(Bullets(base))
    return s


def _big(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "—"


def _lab(a: Analysis, row: dict[str, Any]) -> str | None:
    hp = json.dumps(row.get("hparams") or {}, sort_keys=True)
    for c in a.comps:
        if (c.cond.task, c.cond.size, c.cond.hparams_json) == (row["task"], row["size"], hp):
            return c.cond.label
    return None


def problems_section(a: Analysis) -> Section:
    s = Section("Skipped and failed cells", "problems")
    if a.skipped:
        rows = [[str(x.get("variant", "")), str(x.get("task", "")), TableCell(str(x.get("reason", "")), "wrap")]
                for x in a.skipped]
        s.blocks.append(Table(["Variant", "Task", "Reason"], rows, id="skipped-table",
                              caption="Cells a variant cannot run (not trained)"))
    else:
        s.blocks.append(Para("No skipped cells."))
    bad = [r for r in a.rows if r["status"] != "done" or r.get("primary_value") is None
           or not math.isfinite(r["primary_value"])]
    if bad:
        rows = [[r["variant"], r["task"], str(r["seed"]), json.dumps(r.get("hparams") or {}, sort_keys=True),
                 r["status"], str(r.get("failed_step") if r.get("failed_step") is not None else "—"),
                 TableCell(last_error_line(r.get("error")), "wrap")] for r in bad]
        s.blocks.append(Table(["Variant", "Task", "Seed", "Hyper-parameters", "Status", "Step", "Reason"], rows,
                              id="failed-table", caption="Cells that diverged, failed, timed out or gave no value"))
    else:
        s.blocks.append(Para("No failed, diverged or timed-out cells."))
    return s


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if not isinstance(v, str) else v
    return out


def repro_section(a: Analysis) -> Section:
    s = Section("Reproducibility", "repro")
    st = a.settings
    s.blocks.append(Bullets([
        f"Statistics: paired t test and {int(st.level * 100)}% t interval (scipy); TOST equivalence against each "
        f"task's margin; exact sign-flip test as a robustness column; correction "
        f"{'Benjamini-Hochberg 1995 (FDR)' if st.correction == 'bh' else 'Holm 1979 (FWER)'} at {st.alpha}; "
        f"at least {st.min_seeds} paired seeds per call"
        + (f"; adaptive seeds with looks at {', '.join(map(str, st.looks))}" if st.looks else "")
        + f"; rank-agreement bootstrap {st.n_boot} resamples, seed {st.seed}.",
        "Source of every figure: the results store `results.sqlite` of this run (W&B is never read).",
    ]))
    envs = [_flatten(r.get("env") or {}) for r in a.rows]
    keys = sorted({k for e in envs for k in e})
    rows = []
    for k in keys:
        counts = Counter(e.get(k, "—") for e in envs)
        rows.append([k, "; ".join(f"{v} ({n} cells)" if len(counts) > 1 else v for v, n in counts.most_common())])
    if rows:
        s.blocks.append(Table(["Environment", "Value (cells)"], rows, id="env-table",
                              caption="Versions, git commit and machine, as recorded with the cells"))
    plans = a.meta.get("plans") if isinstance(a.meta.get("plans"), list) else []
    if not plans and a.plan:
        plans = [a.plan]
    s.blocks.append(Para(f"**Plans** that wrote to this store ({len(plans)}; oldest first):" if plans
                         else "**Plan**: (no plan stored)"))
    for plan in plans:
        s.blocks.append(Pre(json.dumps(plan, indent=2, sort_keys=True, default=str)))
    return s
