"""Two regimes side by side: drop-in (the baseline's settings) and equal tuning per arm.

The trials come from a plan's ``tuning`` section (:mod:`modtransfer.run.tuning`; AlgoPerf's
external tuning ruleset, Dahl et al. 2023, arXiv 2306.07179). Per task, study and arm:

1. **Select** the trial with the best median *validation* metric over seeds (the cell's primary
   value); a trial with a diverged or failed seed is not eligible (it did not train reliably).
2. **Score** the selected trial on the *test* split (``test_<metric>`` of each seed), which
   selection never read.
3. **Tuned effect** of a variant in a study: the mean over seeds of the paired improvement of its
   selected trial's test metric over the baseline's selected trial's (same seed; positive =
   better, in the task's units). Across studies (independent trial draws): the mean, with a t
   interval over the studies. Call: better / worse when the interval excludes zero, no change
   when it lies inside the task's margin, unclear otherwise (no multiplicity correction: this is
   a second regime beside the corrected drop-in calls, not a new family of claims).

A gain **holds under tuning** only where both regimes are decided and agree (both better, both
worse, or both no change).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats

DECIDED = ("better", "worse", "no change")


@dataclass
class TunedEffect:
    variant: str
    task: str
    metric: str
    per_study: list[float] = field(default_factory=list)     # mean paired test improvement per study
    chosen: dict[int, dict[str, Any]] = field(default_factory=dict)   # study -> {arm: chosen hparams}
    ci: tuple[float, float] | None = None
    call: str = "unclear"

    @property
    def effect(self) -> float:
        return float(np.mean(self.per_study)) if self.per_study else math.nan


def split_rows(rows: list[dict[str, Any]], index: dict[str, tuple[int, int]]) -> tuple[list[dict], list[dict]]:
    """(rows outside the tuning trials, trial rows with ``study`` and ``trial`` added)."""
    other, trials = [], []
    for r in rows:
        key = json.dumps(r.get("hparams") or {}, sort_keys=True)
        if r.get("hparams") and key in index:
            study, trial = index[key]
            trials.append({**r, "study": study, "trial": trial})
        else:
            other.append(r)
    return other, trials


def _ok(r: dict[str, Any]) -> bool:
    v = r.get("primary_value")
    return r["status"] == "done" and v is not None and math.isfinite(v)


def select(rows: list[dict[str, Any]], higher_is_better: bool) -> int | None:
    """The trial whose seeds all trained and whose median validation value is best; None if none qualifies."""
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_trial.setdefault(r["trial"], []).append(r)
    sign = 1.0 if higher_is_better else -1.0
    scored = [(sign * float(np.median([r["primary_value"] for r in rs])), -t) for t, rs in by_trial.items()
              if all(_ok(r) for r in rs)]
    return -max(scored)[1] if scored else None


def _test_by_seed(rows: list[dict[str, Any]], trial: int, metric: str) -> dict[int, float]:
    out = {}
    for r in rows:
        v = (r.get("metrics") or {}).get("test_" + metric)
        if r["trial"] == trial and isinstance(v, int | float) and math.isfinite(v):
            out[r["seed"]] = float(v)
    return out


def tuned_effects(trial_rows: list[dict[str, Any]], margins: dict[str, float], level: float = 0.95) -> list[TunedEffect]:
    """The tuned effect of every variant on every task of ``trial_rows`` (see the module docstring)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in trial_rows:
        groups.setdefault((r["task"], r["study"], r["variant"]), []).append(r)
    out: dict[tuple[str, str], TunedEffect] = {}
    for (task, study, variant), rows in sorted(groups.items()):
        if variant == "baseline":
            continue
        base = groups.get((task, study, "baseline"), [])
        metric, hib = rows[0]["primary_metric"], bool(rows[0]["higher_is_better"])
        te = out.setdefault((variant, task), TunedEffect(variant, task, metric))
        tv, tb = select(rows, hib), select(base, hib)
        if tv is None or tb is None:
            continue
        te.chosen[study] = {"baseline": _hp(base, tb), variant: _hp(rows, tv)}
        v, b = _test_by_seed(rows, tv, metric), _test_by_seed(base, tb, metric)
        diffs = [(v[s] - b[s]) * (1 if hib else -1) for s in sorted(set(v) & set(b))]
        if diffs:
            te.per_study.append(float(np.mean(diffs)))
    for (_variant, task), te in out.items():
        te.ci = stats.t_interval(te.per_study, level) if len(te.per_study) >= 2 else None
        te.call = _call(te.ci, margins.get(task, math.nan))
    return list(out.values())


def _hp(rows: list[dict[str, Any]], trial: int) -> dict[str, Any]:
    return next(r["hparams"] for r in rows if r["trial"] == trial)


def _call(ci: tuple[float, float] | None, margin: float) -> str:
    if ci is None:
        return "too few studies"
    lo, hi = ci
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    if math.isfinite(margin) and -margin < lo and hi < margin:
        return "no change"
    return "unclear"


def agreement(dropin: str, tuned: str) -> str:
    """Does a call hold across the two regimes?"""
    if dropin not in DECIDED or tuned not in DECIDED:
        return "not decided in both"
    return "holds" if dropin == tuned else f"differs ({dropin} drop-in, {tuned} tuned)"

