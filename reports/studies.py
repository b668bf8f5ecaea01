"""Report sections for particular study shapes: the reference study, hyper-parameter sensitivity, training
sensitivity (plateau failure rates) and implementations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .doc import Bullets, Image, Para, Section, Table, TableCell
from .figures import Figures
from .marks import SYMBOLS, call_cell, ci_text
from .reference import RefRow
from .summary import Analysis, fmt


def reference_section(a: Analysis) -> Section:
    from .intervals import excludes_zero_uncalled, shown_interval  # (kept local: this file is shared with others)

    s = Section("Reference study", "reference")
    s.blocks.append(Para("Narang et al. 2021, \"Do Transformer Modifications Transfer Across Implementations and "
                         "Applications?\" (EMNLP 2021, arXiv 2102.11972), Table 1, 223M-parameter encoder-decoder. "
                         "Our `lm` task sits beside their C4 pre-training loss (log-perplexity after 65k steps; "
                         "**lower is better**), our `mt` task beside their WMT'14 En-De BLEU (**higher is better**). "
                         "Both sides are written as every effect on this page: Δ = improvement over the baseline, "
                         "**positive = better**, in each measure's own units (for the paper's loss: Vanilla "
                         "Transformer − model; for its BLEU: model − Vanilla Transformer). A different sign at small "
                         "scale is a finding, not an error."))
    if not a.reference:
        s.blocks.append(Para("No variant of this run has a row in the paper's table on a task it measured."))
        return s
    rows = []
    for r in a.reference:
        agree = {True: "yes", False: "**no**", None: "—"}[r.signs_agree]
        clear = {True: "yes", False: "no (within noise)", None: "n/a (one run)"}[r.paper_clear]
        c = a.comp(r.variant, r.task)
        lo, hi, kind = shown_interval(a, c) if c is not None else (math.nan, math.nan, "")
        ci = (f"{ci_text((lo, hi), 2)} {kind}" + (" †" if c is not None and excludes_zero_uncalled(c) else "")
              if math.isfinite(lo) else "—")
        rows.append([r.variant, TableCell(r.paper_model, "wrap"), r.task,
                     TableCell(f"{fmt(r.paper_delta, 3, True)} ({r.paper_measure}, {r.paper_direction}: "
                               f"{r.paper_baseline:g} → {r.paper_value:g})", "wrap"),
                     f"{'better' if r.paper_better else 'worse'}, clear: {clear}",
                     f"{fmt(r.ours_delta, 3, True)} {r.ours_metric} {'↑' if r.higher_is_better else '↓'}", ci,
                     call_cell(r.ours_call), agree, r.agreement])
    s.blocks.append(Table(["Variant", "Paper model", "Our task", "Paper Δ improvement (+ = better)", "Paper",
                           "Our Δ improvement (+ = better)", "Our interval of Δ", "Our call", "Signs agree",
                           "Calls agree"], rows, id="reference-table",
                          caption="Improvement over each study's own baseline, positive = better on both sides"))
    s.blocks.append(Para("Paper clear: |Δ| above two standard errors of the difference of two 5-run means "
                         "(only the pre-training loss has a spread in the paper). Our Δ and interval are the ones of "
                         "the Effects table (the same sign convention, the same interval: FCR-adjusted for a call, "
                         "else unadjusted; † = excludes zero without a call). The paper's figures in brackets are "
                         "its baseline → the model, in the measure's own direction."))
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
    return (f"`{r.variant}` on {r.task}: paper {r.paper_measure} improvement {r.paper_delta:+.3g} "
            f"({'better' if r.paper_better else 'worse'}); ours {r.ours_metric} improvement {r.ours_delta:+.3g}, "
            f"call {r.ours_call} ({ours}{paper})")


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
        errors = [e for e in st.errors if math.isfinite(e)]
        body.append([st.task, st.variant, st.label, str(st.n),
                     f"{st.failures} ({st.stuck} on plateau, {st.diverged} diverged)",
                     fmt(st.rate, 2) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
                     f"{fmt(q[1], 3)} [{fmt(q[0], 3)}, {fmt(q[2], 3)}]",
                     f"{fmt(vals[0], 3)} – {fmt(vals[-1], 3)}" if vals else "—",
                     fmt(max(errors), 2) if errors else "—"])
    first = settings[0]
    s.blocks.append(Table(["Task", "Variant", "Setting", "Seeds", "Failures", "Failure rate [95% Wilson]",
                           f"Final {first.metric}: median [quartiles]", "Range over seeds", "Largest SE of a seed"],
                          body, id="plateau-table",
                          caption="A failure: the final metric stayed on the trivial plateau, or training diverged"))
    s.blocks.append(Para(f"On the plateau: the final {first.metric} is within the task's declared fraction of its "
                         f"trivial score (here {first.threshold:.3g} or worse), i.e. the model never left predicting "
                         "the trivial answer. Escaping it is partly chance, so each setting is a failure rate over "
                         "seeds with a Wilson interval, not a single number. *Largest SE of a seed*: the standard "
                         "error of a seed's value over the batches it was scored on (— when the task gives none)."))
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
        cells: list[str | TableCell] = [r["variant"], r["task"]]
        for i in impls:
            p = r["per"].get(i)
            cells.append(TableCell(f"{fmt(p['effect'], 2, True)} SD, {SYMBOLS.get(p['call'], p['call'])}",
                              f"c-{p['call'].replace(' ', '-')}") if p else TableCell("— not run", "c-missing"))
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
