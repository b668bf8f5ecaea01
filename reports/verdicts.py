"""The decision rules: a call per (variant, condition) and a verdict per variant.

Calls follow equivalence-testing logic (Schuirmann 1987; Lakens 2017): "better" and "worse"
need the paired t test, corrected across the benchmark, below alpha; "no change" needs the
two one-sided tests (TOST) against the task's smallest effect of interest, corrected the same
way, below alpha; anything else is "unclear". No call is made from fewer than
``Settings.min_seeds`` paired seeds, nor on a condition whose baseline did not beat the task's
trivial score (Narang et al. 2021 compare only baselines that learned their tasks).

The verdict per variant describes the pattern of its per-task calls; whether the gain transfers
(better, worse or no change on every task) is decided by the headline's intersection-union test
(:mod:`.headline`), which the verdict follows when it is passed in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import Comparison, Settings

VERDICTS = ("transfers", "task-specific", "neutral", "mixed", "hurts", "unstable", "inconclusive")
CALLS = ("better", "worse", "no change", "unclear", "varies", "unstable", "too few seeds", "not learned", "missing")
#: Calls that carry no evidence about the variant and are left out of its verdict.
NO_EVIDENCE = ("missing", "not learned")


def call_rule(settings: Settings) -> str:
    """The per-condition rule, in words, with the settings filled in."""
    corr = "Benjamini-Hochberg (FDR)" if settings.correction == "bh" else "Holm (FWER)"
    pct = int(round(settings.level * 100))
    seq = ""
    if settings.looks:
        seq = (f" Seeds are added in rounds (looks at {', '.join(map(str, settings.looks))} paired seeds) only to "
               "pairs still undecided; each look spends part of alpha (Lan-DeMets, Pocock-type), and a pair's p is "
               "the smallest of its looks' p divided by that look's share.")
    return (
        f"Per task: the paired difference d = variant - baseline per seed, signed so d > 0 is better. "
        f"With at least {settings.min_seeds} paired seeds: **better** / **worse** when the paired t test, adjusted by "
        f"{corr} across all tested comparisons, gives p_adj < {settings.alpha}; **no change** when the two one-sided "
        f"t tests (TOST) show |mean d| < the task's smallest effect of interest (margin), adjusted the same way, "
        f"p_adj < {settings.alpha}; otherwise **unclear**. The {pct}% interval is the paired t interval.{seq} "
        f"**too few seeds** below {settings.min_seeds} paired seeds (numbers shown, no call); **not learned** when "
        f"the baseline is not clearly better than the task's trivial score (left out of verdicts); **unstable** "
        f"when the variant diverged or failed on any seed; **missing** when no seed could be paired."
    )


VERDICT_RULE = (
    "Per variant, over the tasks it ran whose baseline learned (first rule that matches): **unstable**: unstable on "
    "some task; **transfers**: the headline is *better everywhere* (intersection-union test across tasks, at least "
    "two tasks); **hurts**: the headline is *worse everywhere*; **neutral**: the headline is *no change everywhere*; "
    "then from the per-task calls: **mixed**: better on some, worse on others; **task-specific**: better on some, "
    "worse on none; **hurts**: worse on some, better on none; **inconclusive**: otherwise (too few seeds, or "
    "intervals too wide to say). With hyper-parameter axes, a task's call is the call shared by all its settings "
    "(each compared with the baseline at the same setting); settings that disagree make it **varies**, counted as "
    "unclear."
)


def combine(calls: list[str]) -> str:
    """One task's call from those of its hyper-parameter settings."""
    kinds = [k for k in calls if k != "missing"]
    if not kinds:
        return "missing"
    if "unstable" in kinds:
        return "unstable"
    if len(set(kinds)) == 1:
        return kinds[0]
    return "varies"


def decide(mean_diff: float, p_adjusted: float | None, p_equiv_adjusted: float | None, alpha: float) -> str:
    """The call of a tested comparison from its corrected p-values (> 0 mean = better)."""
    if p_adjusted is not None and p_adjusted < alpha and math.isfinite(mean_diff) and mean_diff != 0:
        return "better" if mean_diff > 0 else "worse"
    if p_equiv_adjusted is not None and p_equiv_adjusted < alpha:
        return "no change"
    return "unclear"


def undecided(call_: str) -> bool:
    """Whether adaptive seeds should add a round to a comparison with this call."""
    return call_ == "unclear"


def call(c: Comparison, settings: Settings) -> str:
    """The call of one comparison (its p-values already adjusted across the family)."""
    if c.n_failed:
        return "unstable"
    if not c.n:
        return "missing"
    if c.gate.status == "not learned":
        return "not learned"
    if c.n_used < settings.min_seeds:
        return "too few seeds"
    return decide(c.mean_diff, c.p_adjusted, c.p_equiv_adjusted, settings.alpha)


def verdict(calls: list[str], headline: str | None = None) -> tuple[str, str]:
    """(verdict, reason) of one variant from its call per task (see :func:`combine`) and its headline.

    ``headline``: the kind from :mod:`.headline` (intersection-union test across tasks); it alone makes
    a variant *transfers*, *neutral* or (everywhere) *hurts*. Without it (None) the per-task calls
    decide those too: better (or no change) on every task.
    """
    learned_out = calls.count("not learned")
    kinds = [k for k in calls if k not in NO_EVIDENCE]
    n = len(kinds)
    nb, nw = kinds.count("better"), kinds.count("worse")
    nn, nu = kinds.count("no change"), kinds.count("unstable")
    few = kinds.count("too few seeds")
    rest = n - nb - nw - nn - few
    counts = f"of {n} task(s): {nb} better, {nw} worse, {nn} no change" + (f", {rest} unclear" if rest else "")
    if few:
        counts += f", {few} with too few seeds"
    if learned_out:
        counts += f"; {learned_out} task(s) left out (baseline did not learn)"
    if headline is not None:
        counts += f"; headline: {headline}"
    if nu:
        return "unstable", f"diverged or failed on {nu} of {n} task(s)"
    if n == 0:
        why = "no task whose baseline learned" if learned_out else "no task with paired seeds"
        return "inconclusive", why
    everywhere = {"better": nb == n, "worse": False, "no change": nn == n} if headline is None else {
        k: headline == f"{k} everywhere" for k in ("better", "worse", "no change")}
    if everywhere["better"]:
        return ("transfers", counts) if n >= 2 else ("task-specific", counts + " (only one task: transfer untested)")
    if everywhere["worse"]:
        return "hurts", counts
    if everywhere["no change"]:
        return "neutral", counts
    if nb and nw:
        return "mixed", counts
    if nb == n:
        return "inconclusive", counts + " (better on every task per call, but the headline is not, see its q)"
    if nb:
        return "task-specific", counts
    if nw:
        return "hurts", counts
    return "inconclusive", counts
