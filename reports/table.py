"""The main results table, laid out as Table 1 of Narang et al. 2021 ("Do Transformer Modifications
Transfer Across Implementations and Applications?", EMNLP 2021, arXiv 2102.11972).

One line per model: the baseline first, then the variants grouped by the slot they change; per line
the parameter count, FLOPs per token and training steps per second, then per task condition the
absolute mean ± seed SD of the primary metric with the call against the baseline next to it. A call of
*better* is set in bold, as the paper bolds the significant improvements. The same data is rendered
as an HTML/Markdown table (the report's document model), a LaTeX ``booktabs`` table and a CSV.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modtransfer.core.recipe import RECIPE_SLOTS, recipe_slot
from modtransfer.core.spec import SLOTS

from .analysis import axis_keys, cond_key, conditions
from .doc import Table, TableCell
from .names import display_name, registered_slot
from .records import BASELINE, timings, usable
from .summary import Analysis, fmt

#: How a call is written next to a number (short forms: the long ones are in the verdict table).
CALL_MARK = {"better": "▲", "worse": "▼", "no change": "=", "unclear": "?", "varies": "≈", "unstable": "✗",
             "too few seeds": "…", "not learned": "○", "missing": "—"}
LATEX_MARK = {"better": r"$\blacktriangle$", "worse": r"$\blacktriangledown$", "no change": "$=$",
              "unclear": "?", "varies": r"$\approx$", "unstable": r"$\times$", "too few seeds": r"\dots",
              "not learned": r"$\circ$", "missing": "--"}


@dataclass
class Entry:
    """One model on one task condition: its own final scores over seeds."""

    values: list[float] = field(default_factory=list)
    cells: int = 0                  # cells run (incl. diverged / failed ones)
    call: str = ""                  # against the baseline ("" on the baseline's own line)
    params: float = math.nan        # this model's own cost on this condition (each task builds its own model)
    flops_per_token: float = math.nan
    steps_per_s: float = math.nan
    steps_per_s_cv: float = math.nan   # seed-to-seed coefficient of variation of steps/s (noisy above 10%)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) >= 2 else math.nan

    @property
    def failed(self) -> int:
        return self.cells - len(self.values)


@dataclass
class Line:
    variant: str
    slot: str
    params: float = math.nan
    flops_per_token: float = math.nan
    steps_per_s: float = math.nan
    entries: dict[str, Entry] = field(default_factory=dict)      # condition label -> entry
    name: str = ""                  # display name (the registry's), the variant id if empty
    steps_per_s_cv: float = math.nan   # across the seeds of the cost condition

    @property
    def noisy_speed(self) -> bool:
        """Steps/s on the cost condition varies by more than :data:`NOISY_CV` across seeds, or was measured
        once (a stacked group's seeds share one timing), so its noise is unknown."""
        return not math.isfinite(self.steps_per_s) or not math.isfinite(self.steps_per_s_cv) or \
            self.steps_per_s_cv > NOISY_CV


@dataclass
class MainTable:
    labels: list[str]                     # condition labels, in the report's order
    metrics: dict[str, tuple[str, bool]]  # label -> (metric, higher is better)
    cost_label: str                       # the condition whose params / FLOPs / speed are shown
    lines: list[Line]

    def slots(self) -> list[str]:
        return list(dict.fromkeys(ln.slot for ln in self.lines))


def _slot(spec: dict[str, Any], base: dict[str, Any]) -> str:
    """The slot a variant changes: the first slot whose component differs from the baseline's (a recipe
    variant's: ``optimizer`` or ``loss``, :func:`modtransfer.core.recipe.recipe_slot`)."""
    for s in SLOTS:
        if spec.get(s) != base.get(s):
            return s
    shape = [k for k in ("n_layers", "d_model", "d_ff", "n_heads", "d_head") if spec.get(k) != base.get(k)]
    return "shape" if shape else recipe_slot(spec, base) or "other"


#: Seed-to-seed coefficient of variation of steps/s above which a throughput number is marked noisy.
NOISY_CV = 0.10


def _cv(rows: list[dict[str, Any]]) -> float:
    """Coefficient of variation of steps/s over the rows' separate timings (stacked seeds share one: with
    fewer than two timings it is unknown, NaN, and the number is marked as measured once)."""
    vals = [v for v in (_steps_per_s(r) for r in rows) if math.isfinite(v)]
    if timings(rows) < 2:
        return math.nan
    return float(np.std(vals, ddof=1) / np.mean(vals)) if len(vals) >= 2 and np.mean(vals) > 0 else math.nan


def _steps_per_s(row: dict[str, Any]) -> float:
    steps, train = row.get("steps"), row.get("train_s")
    return steps / train if isinstance(steps, int | float) and isinstance(train, int | float) and train > 0 else math.nan


def mean_of(rows: list[dict[str, Any]], key: Any) -> float:
    """Mean of a numeric column (or of ``key(row)``) over ``rows``, missing and non-finite values left out."""
    vals = [key(r) if callable(key) else r.get(key) for r in rows]
    vals = [float(v) for v in vals if isinstance(v, int | float) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def main_table(a: Analysis) -> MainTable:
    """The table's data from an analysis (baseline-only stores give a one-line table)."""
    conds = conditions(a.rows)
    axes = axis_keys(a.rows)
    labels = [c.label for c in conds.values()]
    metrics = {c.label: (c.metric, c.higher_is_better) for c in conds.values()}
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in a.rows:
        by.setdefault((r["variant"], conds[cond_key(r, axes)].label), []).append(r)
    cost_label = labels[0] if labels else ""
    base_spec = next((r.get("spec") or {} for r in a.rows if r["variant"] == BASELINE), {})
    lines = []
    for v in [BASELINE, *a.order]:
        rows_v = [r for r in a.rows if r["variant"] == v]
        if not rows_v:
            continue
        slot = registered_slot(v) or _slot(rows_v[0].get("spec") or {}, base_spec)
        cost_rows = [r for r in by.get((v, cost_label), []) if r["status"] == "done"]
        line = Line(v, slot, mean_of(cost_rows, "params"), mean_of(cost_rows, "flops_per_token"),
                    mean_of(cost_rows, _steps_per_s), name=display_name(v),
                    steps_per_s_cv=_cv(cost_rows))
        for lab in labels:
            rows = by.get((v, lab), [])
            if not rows:
                continue
            latest = {r["seed"]: r for r in rows}  # the last attempt per seed
            comp = a.comp(v, lab) if v != BASELINE else None
            done = [r for r in latest.values() if r["status"] == "done"]
            line.entries[lab] = Entry([r["primary_value"] for r in latest.values() if usable(r)], len(latest),
                                      comp.call if comp is not None else "", mean_of(done, "params"),
                                      mean_of(done, "flops_per_token"), mean_of(done, _steps_per_s),
                                      _cv(done))
        lines.append(line)
    order = {s: i for i, s in enumerate(["baseline", *SLOTS, "shape", *RECIPE_SLOTS, "other"])}
    lines.sort(key=lambda ln: order.get(ln.slot, len(order)))  # stable: keeps the ranking within a slot
    return MainTable(labels, metrics, cost_label, lines)


def _num(x: float, digits: int = 4) -> str:
    return fmt(x, digits) if math.isfinite(x) else "—"


def _big(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def mean_sd(mean: float, sd: float) -> str:
    """``mean ± sd`` with the SD to two significant digits and the mean to the same decimals (1.944 ± 0.019)."""
    if not math.isfinite(mean):
        return "—"
    if not math.isfinite(sd) or sd <= 0:
        return _num(mean)
    decimals = max(0, 1 - int(f"{sd:.1e}".split("e")[1]))  # from the rounded SD: 0.00999 -> 0.010
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def entry_text(e: Entry | None) -> str:
    if e is None:
        return "— not run"
    if not e.values:
        return f"— ({e.failed} failed)" + (f" {CALL_MARK.get(e.call, e.call)}" if e.call else "")
    text = mean_sd(e.mean, e.sd)
    if e.failed:
        text += f" ({e.failed} failed)"
    if e.call:
        text += f" {CALL_MARK.get(e.call, e.call)}"
    return f"**{text}**" if e.call == "better" else text


def header(t: MainTable, label: str) -> str:
    metric, hib = t.metrics[label]
    return f"{label}: {metric} {'↑' if hib else '↓'}"


#: At most this many task conditions per table on the page (wider tables are split, never scrolled).
COLUMNS_PER_TABLE = 4


def as_tables(t: MainTable, per_table: int = COLUMNS_PER_TABLE) -> list[Table]:
    """The table in the report's document model (HTML and Markdown), split into chunks of task columns."""
    cost = f" ({t.cost_label})" if len(t.labels) > 1 else ""
    per_table = max(1, per_table)
    chunks = [t.labels[i:i + per_table] for i in range(0, len(t.labels), per_table)] or [[]]
    out = []
    for k, labels in enumerate(chunks):
        headers = ["Model", "Slot", f"Params{cost}", f"FLOPs/token{cost}", f"Steps/s{cost}",
                   *[header(t, lab) for lab in labels]]
        rows: list[list[str | TableCell]] = []
        for ln in t.lines:
            name = ln.name or ln.variant
            cells: list[str | TableCell] = [TableCell(f"**{name}**" if ln.slot == "baseline" else name),
                                       ln.slot, _big(ln.params), _big(ln.flops_per_token), speed_text(ln)]
            for lab in labels:
                e = ln.entries.get(lab)
                cls = f"c-{e.call.replace(' ', '-')}" if e is not None and e.call else ""
                cells.append(TableCell(entry_text(e), cls))
            rows.append(cells)
        part = f" (part {k + 1} of {len(chunks)})" if len(chunks) > 1 else ""
        out.append(Table(headers, rows, id="main-results-table" + (f"-{k + 1}" if k else ""),
                         caption="Mean ± seed SD of each model's own final score; ▲ better, ▼ worse, = no change, "
                                 "? unclear, ✗ unstable, … too few seeds, ○ baseline did not learn, — not run; bold: "
                                 f"better. {cost_note(t)}" + part))
    return out


def speed_text(ln: Line) -> str:
    """Steps/s, with ``~`` where it varies by more than 10% across seeds (a machine's load, not the model)."""
    return fmt(ln.steps_per_s, 3) + ("~" if ln.noisy_speed else "")


def cost_note(t: MainTable) -> str:
    """What the cost columns are: one task's models (each task builds its own), steps/s marked when noisy."""
    where = (f"Params, FLOPs/token and steps/s are those of the {t.cost_label} models (each task builds its own "
             "model; main_table.csv has every task's). ") if len(t.labels) > 1 else ""
    return where + (f"Steps/s~: varies by more than {NOISY_CV:.0%} across seeds (machine load), or was measured once "
                    "(stacked seeds share one timing), so its noise is unknown: not comparable.")


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("×", r"$\times$")


def _decimals(sd: float) -> int:
    """Decimals that show ``sd`` to two significant digits (as :func:`mean_sd`)."""
    return max(0, 1 - int(f"{sd:.1e}".split("e")[1])) if math.isfinite(sd) and sd > 0 else 3


def _tex_entry(e: Entry | None, decimals: int) -> str:
    if e is None:
        return "--"
    if not e.values:
        return f"-- ({e.failed} failed)"
    text = f"{e.mean:.{decimals}f}" + (rf" $\pm$ {e.sd:.{decimals}f}" if math.isfinite(e.sd) else "")
    if e.call == "better":
        text = rf"\textbf{{{text}}}"
    return text + (f" {LATEX_MARK.get(e.call, _tex(e.call))}" if e.call else "")


def latex_marks() -> str:
    """Every mark a LaTeX table may hold, defined (for its caption)."""
    words = {"better": "better", "worse": "worse", "no change": "no change (within the margin)",
             "unclear": "unclear", "varies": "varies across settings", "unstable": "a cell diverged or failed",
             "too few seeds": "too few seeds", "not learned": "the baseline did not learn the task",
             "missing": "not run"}
    return "; ".join(f"{LATEX_MARK[k]} {w}" for k, w in words.items())


def latex(t: MainTable, benchmark: str) -> str:
    """A ``booktabs`` table scaled to the text width (needs ``booktabs``, ``amssymb`` and ``graphicx``), the
    models by display name, one rule between registered slots, one number of decimals per column (the
    finest any entry's SD needs), a caption that defines every mark."""
    cols = "ll" + "r" * 3 + "c" * len(t.labels)
    head = ["Model", "Slot", "Params", "FLOPs/tok", "Steps/s", *[_tex(header(t, lab)) for lab in t.labels]]
    decimals = {lab: max([_decimals(e.sd) for ln in t.lines if (e := ln.entries.get(lab)) and e.values] or [3])
                for lab in t.labels}
    out = [r"\begin{table}[t]", r"\centering", r"\small", r"\resizebox{\textwidth}{!}{%",
           rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    prev = None
    for ln in t.lines:
        if prev is not None and ln.slot != prev:
            out.append(r"\midrule")
        prev = ln.slot
        cells = [_tex(ln.name or ln.variant), _tex(ln.slot), _tex(_big(ln.params)), _tex(_big(ln.flops_per_token)),
                 _tex(speed_text(ln))] + [_tex_entry(ln.entries.get(lab), decimals[lab]) for lab in t.labels]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}",
            rf"\caption{{{_tex(benchmark)}: mean $\pm$ seed SD of each model's final score; bold: better than the "
            rf"baseline after correction across the benchmark. Marks: {latex_marks()}. {_tex(cost_note(t))}}}",
            r"\label{tab:modtransfer-main}", r"\end{table}"]
    return "\n".join(out) + "\n"


CSV_COLUMNS = ["model", "variant", "slot", "condition", "metric", "higher_is_better", "seeds", "cells", "mean", "sd",
               "call", "params", "flops_per_token", "steps_per_s", "steps_per_s_cv"]


def write_csv(t: MainTable, path: Path) -> None:
    """The table's data, one row per model x condition, each with that condition's own model costs
    (params, FLOPs per token, steps/s and its seed CV): each task builds a different model.
    ``higher_is_better`` is ``true`` / ``false`` as in every export."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for ln in t.lines:
            for lab in t.labels:
                e = ln.entries.get(lab)
                if e is None:
                    continue
                metric, hib = t.metrics[lab]
                w.writerow([ln.name or ln.variant, ln.variant, ln.slot, lab, metric, bool_text(hib), len(e.values),
                            e.cells, *(_cell(x) for x in (e.mean, e.sd)), e.call,
                            *(_cell(x) for x in (e.params, e.flops_per_token, e.steps_per_s, e.steps_per_s_cv))])


def bool_text(x: Any) -> str:
    """A boolean as every export writes it: ``true`` / ``false``."""
    return "true" if bool(x) else "false"


def _cell(x: float) -> Any:
    return "" if not math.isfinite(x) else x
