"""What the report says: the sections of the document, built from an :class:`Analysis` and its figures."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .analysis import BASELINE
from .doc import Bullets, Cell, Document, Image, Para, Pre, Section, Table
from .figures import Figures
from .front import caveats, headline, main_section, sweep_section
from .reference import RefRow
from .summary import Analysis, fmt
from .table import MainTable, main_table
from .verdicts import VERDICT_RULE, call_rule

SYMBOLS = {"better": "▲ better", "worse": "▼ worse", "no change": "= no change", "unclear": "? unclear",
           "varies": "≈ varies", "unstable": "✗ unstable", "missing": "— missing", "too few seeds": "… too few seeds",
           "not learned": "○ baseline did not learn"}


def call_cell(call: str) -> Cell:
    return Cell(SYMBOLS.get(call, call), f"c-{call.replace(' ', '-')}")


def ratio(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.3g}×"


def ci_text(ci: tuple[float, float] | None, n: int) -> str:
    if ci is None:
        return "none (1 seed)" if n == 1 else "—"
    return f"[{ci[0]:+.3g}, {ci[1]:+.3g}]"


def build_document(a: Analysis, figs: Figures, table: MainTable | None = None) -> Document:
    """The report: headline, caveats, the main table first, then the evidence behind it."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings = f" in {len(a.labels)} settings" if len(a.labels) != len(a.groups) else ""
    who = (f"{len(a.order)} variant(s) against `{BASELINE}`" if a.order else f"`{BASELINE}` only")
    sub = (f"Benchmark `{a.benchmark}` · {len(a.rows)} cells · {who} on {len(a.groups)} task(s){settings} · "
           f"generated {now}")
    doc = Document(f"Transfer report: {a.benchmark}", sub, headline=headline(a), banner=caveats(a))
    table = table if table is not None else main_table(a)
    optional: list[tuple[str, Section | None, str]] = [
        ("Verdicts", verdict_section(a, figs) if a.order else None, "no variant besides the baseline"),
        ("Baseline per hyper-parameter setting", sweep_section(a, figs), "one setting per task"),
        ("Noise floor and margins", noise_section(a) if a.comps else None, "no comparison with the baseline"),
        ("Effects per task", effects_section(a, figs) if a.comps else None, "no comparison with the baseline"),
        ("Learning curves", curves_section(figs) if figs.curves else None, "no cell recorded a curve"),
        ("Agreement between tasks", agreement_section(a, figs) if a.agreement.pairs else None,
         "needs at least two tasks and two variants"),
        ("Cost next to benefit", cost_section(a) if a.order else None, "no variant besides the baseline"),
        ("Reference study", reference_section(a) if a.reference else None,
         "no variant of this run has a row in Narang et al. 2021's table on a task it measured"),
        ("Hyper-parameter sensitivity", sensitivity_section(a, figs) if a.sensitivity else None,
         "no variant was compared over hyper-parameter settings"),
    ]
    plateau = a.plateau()
    impl_rows = a.across_implementations()
    optional += [("Training sensitivity", plateau_section(plateau, figs) if plateau else None,
                  "no task declares a plateau threshold for these rows"),
                 ("Across implementations", implementations_section(impl_rows) if impl_rows else None,
                  "one implementation only")]
    doc.sections = [main_section(a, table)]
    for title, section, why in optional:
        if section is not None:
            doc.sections.append(section)
        else:
            doc.omitted.append(f"**{title}**: {why}.")
    doc.sections += [problems_section(a), repro_section(a)]
    return doc


def noise_section(a: Analysis) -> Section:
    """Per condition: the margin each call was judged against and the baseline's seed noise."""
    s = Section("Noise floor and margins", "noise")
    rows = []
    for r in a.noise_floor():
        rows.append([r["condition"], r["metric"], f"{fmt(r['margin'], 3)} ({r['margin_source']})",
                     f"{fmt(r['noise_sd'], 3)} ({r['noise_source']})", str(r["baseline_seeds"]),
                     call_cell("not learned") if r["gate"] == "not learned" else r["gate"],
                     Cell(r["gate_text"], "wrap")])
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
        cells: list[str | Cell] = [v, Cell(verdict, f"v-{verdict}"), Cell(why, "wrap"),
                                   fmt(a.overall[v], 3, signed=True)]
        for g in a.groups:
            tc = a.task_calls[v].get(g)
            cells.append(call_cell(tc) if tc else Cell("— not run", "c-missing"))
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
                     "10% across seeds (machine load), so read it as a rough figure.")
    notes.append(f"Ordered by overall effect: the mean over the tasks whose baseline learned of Δ in {a.effect_unit} "
                 "(each task's own seed noise), one unit for every metric.")
    s.blocks.append(Bullets(notes))
    if figs.heatmap:
        s.blocks.append(Image(figs.heatmap, "Transfer heatmap: variants by tasks, colour = effect",
                              f"Colour: effect in {a.effect_unit} (blue = better). * = better/worse after correction, "
                              "= = no change, ✗ = unstable, ○ = baseline did not learn."))
    return s


def effects_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Effects per task", "effects")
    headers = ["Variant", "Task", "Call", "Metric", "n", "Baseline mean ± SD", "Variant mean", "Δ (+ = better)",
               f"{int(a.settings.level * 100)}% CI of Δ", "Margin", "Effect (SDs)", "Win rate", "p adj.",
               "p equiv. adj.", "Diverged"]
    rows = []
    for v in a.order:
        for lab in a.labels:
            c = a.comp(v, lab)
            if c is None:
                continue
            n = str(c.n) if c.n_used in (0, c.n) else f"{c.n_used} of {c.n}"
            rows.append([v, lab, call_cell(c.call), f"{c.cond.metric} ({'↑' if c.cond.higher_is_better else '↓'})",
                         n, f"{fmt(c.baseline_mean, 4)} ± {fmt(c.baseline_std, 2)}", fmt(c.variant_mean, 4),
                         fmt(c.mean_diff, 3, True), ci_text(c.ci, c.n), "±" + fmt(c.margin, 3),
                         fmt(c.std_effect, 3, True), fmt(c.p_improve, 2), fmt(c.p_adjusted, 2),
                         fmt(c.p_equiv_adjusted, 2),
                         f"{c.n_diverged}/{c.n_variant_cells}" if c.n_diverged else "0"])
    s.blocks.append(Table(headers, rows, id="effects-table",
                          caption="Paired differences with the baseline (same seeds, same hyper-parameters)"))
    s.blocks.append(Para("Δ is the mean over paired seeds of (variant − baseline), signed so that positive is better "
                         "(↑: higher is better, ↓: lower is better). Effect (SDs) is Δ over the baseline's "
                         "seed-to-seed standard deviation. Win rate: the share of paired seeds on which the variant did "
                         "better (a description of the seeds, not a probability of improvement). p adj.: two-sided "
                         "paired t test (sequential over the looks with adaptive seeds), corrected across tests; "
                         "p equiv. adj.: TOST against ± margin, corrected. The uncorrected p and the exact sign-flip p "
                         "(a distribution-free check, not used for calls) are in `transfer.csv`. n: paired seeds (used of "
                         "available when a round of adaptive seeds is incomplete). Diverged: diverged cells of the "
                         "variant, a failure rate never averaged into a mean."))
    for lab, f in figs.forest.items():
        s.blocks.append(Image(f, f"Forest plot for {lab}", f"{lab}: mean paired difference and "
                              f"{int(a.settings.level * 100)}% paired t interval; blue = better, vermillion = worse."))
    return s


def curves_section(figs: Figures) -> Section:
    s = Section("Learning curves", "curves")
    if not figs.curves:
        s.blocks.append(Para("No learning curves were recorded."))
    for lab, f in figs.curves.items():
        s.blocks.append(Image(f, f"Learning curves for {lab}", f"{lab}: training loss, baseline dashed grey."))
    return s


def agreement_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Agreement between tasks", "agreement")
    g = a.agreement
    if not g.pairs:
        s.blocks.append(Para("Agreement needs at least two tasks and two variants."))
        return s
    if figs.agreement:
        s.blocks.append(Image(figs.agreement, "Task agreement matrix (Kendall tau)",
                              "Kendall tau-b between tasks' rankings of the variants by mean paired difference."))
    rows = [[p["a"], p["b"], str(p["n_variants"]), fmt(p["tau"], 2, True),
             ci_text(p["ci"], 2) if p["ci"] else (g.seeds_note or "—")] for p in g.pairs]
    s.blocks.append(Table(["Task A", "Task B", "Variants", "Kendall tau", f"{int(a.settings.level * 100)}% CI"],
                          rows, id="agreement-table"))
    mean_ci = f" (bootstrap {int(a.settings.level * 100)}% interval {ci_text(g.mean_ci, 2)})" if g.mean_ci else ""
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
                        "changes it by that much, so read it as a direction, not a measurement, and look at its "
                        "interval.")
    if g.seeds_note:
        items.append(g.seeds_note + ".")
    items.append("Intervals: paired bootstrap over seeds, the same seed draw for every variant of a task.")
    s.blocks.append(Bullets(items))
    return s


def cost_section(a: Analysis) -> Section:
    s = Section("Cost next to benefit", "cost")
    rows = []
    for v in a.order:
        cost = a.costs.get(v, {})
        verdict, _ = a.verdicts[v]
        rows.append([v, Cell(verdict, f"v-{verdict}"), fmt(a.overall[v], 3, True),
                     ratio(cost.get("params", math.nan)), ratio(cost.get("flops_per_token", math.nan)),
                     ratio(cost.get("tokens_per_s", math.nan))])
    s.blocks.append(Table(["Variant", "Verdict", f"Overall effect ({a.effect_unit})", "Params ×", "FLOPs/token ×",
                           "Tokens/s ×"], rows, id="cost-table",
                          caption="Cost relative to the baseline (geometric mean over tasks; > 1 = more)"))
    base = []
    for lab in a.labels:
        brows = [r for r in a.rows if r["variant"] == BASELINE and r["status"] == "done" and _lab(a, r) == lab]
        if brows:
            base.append(f"{lab}: baseline {_big(_mean(brows, 'params'))} parameters, "
                        f"{_big(_mean(brows, 'flops_per_token'))} FLOPs/token, "
                        f"{_big(_mean(brows, 'tokens_per_s'))} tokens/s")
    if base:
        s.blocks.append(Bullets(base))
    return s


def _big(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "—"


def _mean(rows: list[dict[str, Any]], col: str) -> float:
    vals = [r[col] for r in rows if isinstance(r.get(col), int | float)]
    return sum(vals) / len(vals) if vals else math.nan


def _lab(a: Analysis, row: dict[str, Any]) -> str | None:
    hp = json.dumps(row.get("hparams") or {}, sort_keys=True)
    for c in a.comps:
        if (c.cond.task, c.cond.size, c.cond.hparams_json) == (row["task"], row["size"], hp):
            return c.cond.label
    return None


def reference_section(a: Analysis) -> Section:
    s = Section("Reference study", "reference")
    s.blocks.append(Para("Narang et al. 2021, \"Do Transformer Modifications Transfer Across Implementations and "
                         "Applications?\" (EMNLP 2021, arXiv 2102.11972), Table 1: Δ = model − Vanilla Transformer, "
                         "223M-parameter encoder-decoder. Our `lm` task sits beside their C4 pre-training loss "
                         "(65k steps, lower is better), our `mt` task beside their WMT'14 En-De BLEU. A different "
                         "sign at small scale is a finding, not an error."))
    if not a.reference:
        s.blocks.append(Para("No variant of this run has a row in the paper's table on a task it measured."))
        return s
    rows = []
    for r in a.reference:
        agree = {True: "yes", False: "**no**", None: "—"}[r.signs_agree]
        clear = {True: "yes", False: "no (within noise)", None: "n/a (one run)"}[r.paper_clear]
        rows.append([r.variant, r.paper_model, r.task, r.paper_measure, fmt(r.paper_delta, 3, True),
                     "better" if r.paper_better else "worse", clear, r.ours_metric, fmt(r.ours_delta, 3, True),
                     ci_text(r.ours_ci, 2) if r.ours_ci else "—", call_cell(r.ours_call), agree,
                     r.agreement])
    s.blocks.append(Table(["Variant", "Paper model", "Our task", "Paper measure", "Paper Δ", "Paper", "Paper clear",
                           "Our metric", "Our Δ", "Our CI", "Our call", "Signs agree", "Calls agree"], rows,
                          id="reference-table"))
    s.blocks.append(Para("Paper clear: |Δ| above two standard errors of the difference of two 5-run means "
                         "(only the pre-training loss has a spread in the paper). Δ is in each metric's own "
                         "direction (for losses, negative is better)."))
    dis = [r for r in a.reference if r.signs_agree is False]
    if dis:
        s.blocks.append(Para(f"**Disagreements** ({len(dis)} of {len(a.reference)}): the point estimates point the "
                             "other way."))
        s.blocks.append(Bullets([_disagreement(r) for r in dis]))
    else:
        s.blocks.append(Para("No disagreement in sign between the paper and this run."))
    return s


def _disagreement(r: RefRow) -> str:
    ours = "significant after correction" if r.agreement == "disagree" else "ours not significant"
    paper = "" if r.paper_clear is not False else "; the paper's own difference is within its noise"
    return (f"`{r.variant}` on {r.task}: paper {r.paper_measure} Δ {r.paper_delta:+.3g} "
            f"({'better' if r.paper_better else 'worse'}); ours {r.ours_metric} Δ {r.ours_delta:+.3g}, call "
            f"{r.ours_call} ({ours}{paper})")


def sensitivity_section(a: Analysis, figs: Figures) -> Section:
    s = Section("Hyper-parameter sensitivity", "sensitivity")
    rows = [[r["variant"], r["task"], str(r["settings"]), str(r["with_data"]), str(r["beats_baseline"]),
             fmt(r["share"], 2), str(r["better_calls"]), str(r["worse_calls"])] for r in a.sensitivity]
    s.blocks.append(Table(["Variant", "Task", "Settings", "With data", "Beats baseline", "Share", "Better calls",
                           "Worse calls"], rows, id="sensitivity-table",
                          caption="Each setting compares the variant with the baseline at the same hyper-parameters"))
    for name, f in figs.sensitivity.items():
        s.blocks.append(Image(f, f"Sensitivity on {name}", f"{name}: primary metric over the hyper-parameter grid."))
    return s


def plateau_section(settings: list[Any], figs: Figures) -> Section:
    """Training sensitivity: failure rate with its interval and the spread of the final metric, per setting."""
    s = Section("Training sensitivity", "training-sensitivity")
    body = []
    for st in settings:
        ci = st.interval
        vals = sorted(st.values)
        q = (np.percentile(vals, [25, 50, 75]) if vals else [math.nan] * 3)
        body.append([st.task, st.variant, st.label, str(st.n),
                     f"{st.failures} ({st.stuck} on plateau, {st.diverged} diverged)",
                     fmt(st.rate, 2) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
                     f"{fmt(q[1], 3)} [{fmt(q[0], 3)}, {fmt(q[2], 3)}]", fmt(min(vals), 3) if vals else "—"])
    s.blocks.append(Table(["Task", "Variant", "Setting", "Seeds", "Failures", "Failure rate [95% Wilson]",
                           "Final metric: median [quartiles]", "Best seed"], body, id="plateau-table",
                          caption="A failure: the final metric stayed on the trivial plateau, or training diverged"))
    thr = settings[0]
    s.blocks.append(Para(f"On the plateau: the final {thr.metric} is within the task's declared fraction of its "
                         f"trivial score (here {thr.threshold:.3g} or worse), i.e. the model never left predicting "
                         "the trivial answer. Escaping it is partly chance, so each setting is a failure rate over "
                         "seeds with a Wilson interval, not a single number."))
    for name, f in figs.plateau.items():
        s.blocks.append(Image(f, f"Failure rate per setting, {name}", f"{name}: failures / seeds per setting."))
        if name in figs.spread:
            s.blocks.append(Image(figs.spread[name], f"Final metric per seed, {name}",
                                  f"{name}: the final metric of every seed; dashed: the plateau threshold."))
    return s


def implementations_section(rows: list[dict[str, Any]]) -> Section:
    """Does a variant's effect keep its sign across implementations (Narang et al. 2021's question)?"""
    s = Section("Across implementations", "implementations")
    impls = sorted({i for r in rows for i in r["per"]})
    body = []
    for r in rows:
        cells: list[str | Cell] = [r["variant"], r["task"]]
        for i in impls:
            p = r["per"].get(i)
            cells.append(Cell(f"{fmt(p['effect'], 2, True)} SD, {SYMBOLS.get(p['call'], p['call'])}",
                              f"c-{p['call'].replace(' ', '-')}") if p else Cell("— not run", "c-missing"))
        cells += [{"kept": "yes", "flips": "**no: flips**", "untested": "not shown (some calls unclear)"}[r["sign"]],
                  "yes" if r["points"] else "no"]
        body.append(cells)
    s.blocks.append(Table(["Variant", "Task", *impls, "Sign kept (calls)", "Point estimates agree"], body,
                          id="implementations-table",
                          caption="Each cell: the variant's effect against that implementation's own baseline"))
    s.blocks.append(Para("Each implementation is its own baseline (its own seeds, budget and task): a variant is "
                         "compared only with the baseline of the same implementation. *Sign kept* asks for a better "
                         "or worse call on every implementation, all the same way; *flips* means better on one and "
                         "worse on another."))
    return s


def _reason(error: str | None) -> str:
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    text = lines[-1] if lines else "(no reason recorded)"
    return text if len(text) <= 300 else text[:297] + "..."


def problems_section(a: Analysis) -> Section:
    s = Section("Skipped and failed cells", "problems")
    if a.skipped:
        rows = [[str(x.get("variant", "")), str(x.get("task", "")), Cell(str(x.get("reason", "")), "wrap")]
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
                 Cell(_reason(r.get("error")), "wrap")] for r in bad]
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
