"""The report's "Tasks" section: what each task's numbers are, from its card
(:class:`~modtransfer.core.task_card.TaskCard`): data, splits, tokenisation, the metric it decides on
with its unit and direction, the evaluation protocol, the trivial score and the margin with its source.
"""

from __future__ import annotations

import json
import math
from typing import Any

from modtransfer.core.task_card import SIGN_CONVENTION

from .cards import card
from .doc import Para, Section, Table, TableCell
from .summary import Analysis, fmt


def _splits(splits: dict[str, Any]) -> str:
    parts = []
    for what, per in splits.items():
        if isinstance(per, dict):
            parts.append(f"{what.replace('_', ' ')}: " + ", ".join(f"{k} {v:,}" for k, v in per.items()))
    return "; ".join(parts) or "not counted here (the data is not cached on this machine, or drawn on the fly)"


def _trivial(a: Analysis, task: str) -> str:
    values = {c.gate.trivial for c in a.comps if c.cond.task == task and math.isfinite(c.gate.trivial)}
    return ", ".join(fmt(v, 4) for v in sorted(values)) or "—"


def tasks_section(a: Analysis) -> Section | None:
    """One row per task of the run; None when no task has a card."""
    tasks = sorted({r["task"] for r in a.rows})
    cards = {t: card(a.rows, t) for t in tasks}
    if not any(cards.values()):
        return None
    s = Section("Tasks", "tasks")
    rows = []
    for t in tasks:
        c = cards[t]
        if c is None:
            rows.append([t, "no card (a task the registry does not know here)", "", "", "", ""])
            continue
        margin, source = a.settings.margin(t)
        better = "higher is better" if c["higher_is_better"] else "lower is better"
        rows.append([t, TableCell(f"{c['data']} Splits: {_splits(c['splits'])}.", "wrap"),
                     TableCell(c["tokenisation"], "wrap"),
                     TableCell(f"{c['decides_on']} in {c['unit']} ({better}). {c['evaluation']}", "wrap"),
                     TableCell(f"{_trivial(a, t)} ({c['trivial_name']})", "wrap"),
                     TableCell(f"{fmt(margin, 3)} (from the {source}). {c['margin_source']}", "wrap")])
    s.blocks.append(Table(["Task", "Data and splits", "Tokenisation", "Metric, unit and evaluation", "Trivial score",
                           "Margin and where it comes from"], rows, id="tasks-table"))
    configs = {t: json.dumps(next((r.get("task_config") or {} for r in a.rows if r["task"] == t), {}), sort_keys=True)
               for t in tasks}
    s.blocks.append(Para(f"Sign convention of every Δ on this page and in every export: {SIGN_CONVENTION}. Each "
                         "task builds its own model (vocabulary, input and output sizes), so parameter counts differ "
                         "by task. Task options as run: " + "; ".join(f"{t} `{cfg}`" for t, cfg in configs.items())
                         + "."))
    return s
