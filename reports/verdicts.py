"""The decision rules: a call per (variant, condition) and a verdict per variant.

Calls follow the logic of equivalence testing (Schuirmann 1987; Lakens 2017): "better" and
"worse" need a corrected test *and* an interval clear of zero; "no change" needs the interval
inside a stated margin; anything else is "unclear". The sign-flip test is exact but discrete:
with n pairs its p can never be below 2 / 2**n, so with fewer pairs than needed to reach
alpha the test is left out of the correction family (Tarone 1990, "A modified Bonferroni
method for discrete data") and a descriptive rule, marked as such, is used instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .analysis import Comparison, Settings

VERDICTS = ("transfers", "task-specific", "neutral", "mixed", "hurts", "unstable", "inconclusive")
CALLS = ("better", "worse", "no change", "unclear", "varies", "unstable", "missing")


def call_rule(settings: Settings) -> str:
    """The per-condition rule, in words, with the settings filled in."""
    corr = "Benjamini-Hochberg (FDR)" if settings.correction == "bh" else "Holm (FWER)"
    k = settings.min_test_pairs
    pct = int(round(settings.level * 100))
    return (
        f"Per task: the paired difference d = variant - baseline per seed, signed so d > 0 is better. "
        f"With at least {k} paired seeds: **better** / **worse** when the exact sign-flip test, adjusted by "
        f"{corr} across all such tests, gives p_adj < {settings.alpha} and the {pct}% bootstrap interval of "
        f"mean(d) lies entirely above / below zero; **no change** when that interval lies inside "
        f"±{settings.rel_threshold:g}% of the baseline mean; otherwise **unclear**. "
        f"With 1 to {k - 1} paired seeds (too few for the test to ever reach p <= {settings.alpha}) a "
        f"descriptive fallback, marked †: **better** / **worse** when the relative change is at least "
        f"{settings.rel_threshold:g}% in that direction and every paired seed agrees; **no change** when "
        f"|relative change| < {settings.rel_threshold:g}%; otherwise **unclear**. **unstable** when the variant "
        f"diverged or failed on any seed; **missing** when no seed could be paired."
    )


VERDICT_RULE = (
    "Per variant, over the tasks it ran (first rule that matches): **unstable**: unstable on some task; "
    "**transfers**: better on every task (at least two tasks); **mixed**: better on some, worse on others; "
    "**task-specific**: better on some, worse on none; **hurts**: worse on some, better on none; "
    "**neutral**: no change on every task; **inconclusive**: otherwise (intervals too wide to say). "
    "With hyper-parameter axes, a task's call is the call shared by all its settings (each compared with the "
    "baseline at the same setting); settings that disagree make it **varies**, counted as unclear. "
    "A verdict resting on any † call is marked †."
)


def combine(calls: list[tuple[str, bool]]) -> tuple[str, bool]:
    """One task's (call, descriptive) from those of its hyper-parameter settings."""
    kinds = [k for k, _ in calls if k != "missing"]
    descriptive = any(d for k, d in calls if k != "missing")
    if not kinds:
        return "missing", False
    if "unstable" in kinds:
        return "unstable", False
    if len(set(kinds)) == 1:
        return kinds[0], descriptive
    return "varies", descriptive


def call(c: Comparison, settings: Settings) -> tuple[str, bool]:
    """(call, descriptive) for one comparison."""
    if c.n_failed:
        return "unstable", False
    if not c.n:
        return "missing", False
    base = abs(float(sum(c.paired_baseline)) / c.n)
    if c.n < settings.min_test_pairs:
        rel = c.rel_change
        if not math.isfinite(rel):
            return "unclear", True
        if rel >= settings.rel_threshold and all(d > 0 for d in c.diffs):
            return "better", True
        if rel <= -settings.rel_threshold and all(d < 0 for d in c.diffs):
            return "worse", True
        if abs(rel) < settings.rel_threshold:
            return "no change", True
        return "unclear", True
    lo, hi = c.ci if c.ci else (-math.inf, math.inf)
    significant = c.p_adjusted is not None and c.p_adjusted < settings.alpha
    if significant and lo > 0:
        return "better", False
    if significant and hi < 0:
        return "worse", False
    margin = settings.rel_threshold / 100.0 * base
    if -margin < lo and hi < margin:
        return "no change", False
    return "unclear", False


def verdict(calls: list[tuple[str, bool]]) -> tuple[str, str, bool]:
    """(verdict, reason, descriptive) of one variant from its (call, descriptive) per task (see :func:`combine`)."""
    kinds = [k for k, _ in calls if k != "missing"]
    descriptive = any(d for k, d in calls if k != "missing")
    n = len(kinds)
    nb, nw = kinds.count("better"), kinds.count("worse")
    nn, nu = kinds.count("no change"), kinds.count("unstable")
    rest = n - nb - nw - nn
    counts = f"of {n} task(s): {nb} better, {nw} worse, {nn} no change" + (f", {rest} unclear" if rest else "")
    if nu:
        return "unstable", f"diverged or failed on {nu} of {n} task(s)", False
    if n == 0:
        return "inconclusive", "no task with paired seeds", False
    if nb == n and n >= 2:
        return "transfers", counts, descriptive
    if nb and nw:
        return "mixed", counts, descriptive
    if nb:
        extra = " (only one task: transfer untested)" if n == 1 else ""
        return "task-specific", counts + extra, descriptive
    if nw:
        return "hurts", counts, descriptive
    if nn == n:
        return "neutral", counts, descriptive
    return "inconclusive", counts, descriptive
