"""Does a call made on a task survive on that task's held-out variants?

A held-out task variant (:mod:`modtransfer.tasks.heldout`; AlgoPerf's workload variants, Dahl et
al. 2023, arXiv 2306.07179) asks its parent's question on a changed surface. For every variant
whose call on a parent task is decided (better, worse or no change), this module reads its call on
each held-out variant of that parent in the same run and says whether the call survives:

- **survives**: the same call there;
- **reverses**: better on one, worse on the other;
- **lost**: a gain or loss on the parent is "no change" there, or the reverse;
- **untested**: the call there is not decided (unclear, too few seeds, the baseline did not learn).
"""

from __future__ import annotations

from typing import Any

from .doc import Para, Section, Table
from .summary import Analysis

DECIDED = ("better", "worse", "no change")


def parents() -> dict[str, str]:
    """Registered task name -> the task it is a held-out variant of (only held-out variants)."""
    from modtransfer.core.task import TASKS

    out = {}
    for name in TASKS.names():
        parent = getattr(TASKS.get(name), "held_out_of", "")
        if parent:
            out[name] = parent
    return out


def survival(main: str, other: str) -> str:
    if other not in DECIDED:
        return "untested"
    if main == other:
        return "survives"
    if {main, other} == {"better", "worse"}:
        return "reverses"
    return "lost"


def survival_rows(a: Analysis, held: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per (variant, setting of a parent task with a decided call, held-out variant measured at the same
    setting): a plan with a hyper-parameter axis compares the task and its variant setting by setting."""
    held = parents() if held is None else held
    calls = {(c.variant, c.cond.task, c.cond.hparams_json): c for c in a.comps}
    rows = []
    for (variant, task, hp), comp in sorted(calls.items()):
        if comp.call not in DECIDED:
            continue
        for child, parent in held.items():
            other = calls.get((variant, child, hp)) if parent == task else None
            if other is not None:
                rows.append({"variant": variant, "task": comp.cond.label, "call": comp.call,
                             "held_out": other.cond.label, "held_out_call": other.call,
                             "survival": survival(comp.call, other.call)})
    return rows


def transfer_column(rows: list[dict[str, Any]]) -> dict[str, str]:
    """variant -> a short summary for the main table: how many decided calls survived their held-out variants."""
    out: dict[str, str] = {}
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r["survival"])
    for v, outcomes in by.items():
        tested = [o for o in outcomes if o != "untested"]
        out[v] = (f"{tested.count('survives')}/{len(tested)} survive" if tested else "untested") + (
            f", {outcomes.count('reverses')} reverse" if "reverses" in outcomes else "")
    return out


def heldout_section(a: Analysis) -> Section | None:
    held = parents()
    present = {c.cond.task for c in a.comps}
    if not any(child in present and parent in present for child, parent in held.items()):
        return None
    rows = survival_rows(a, held)
    s = Section("Held-out task variants", "held-out")
    s.blocks.append(Para("A held-out variant of a task keeps its question and changes its surface (the corpus, the "
                         "tokens, the direction of translation, the target function or the input shape). A call "
                         "decided on the task **survives** when the variant gets the same call there; it "
                         "**reverses** when better turns worse or back; it is **lost** when a gain or a loss "
                         "becomes no change (or the reverse); **untested** when the held-out call is not decided."))
    if not rows:
        s.blocks.append(Para("No variant has a decided call on a task whose held-out variant this run measured."))
        return s
    s.blocks.append(Table(["Variant", "Task", "Call there", "Held-out variant", "Call there", "Outcome"],
                          [[r["variant"], r["task"], r["call"], r["held_out"], r["held_out_call"], r["survival"]]
                           for r in rows], id="held-out-table",
                          caption="Calls on each task against its held-out variants in the same run"))
    return s
