"""The intervals a report shows, matched to its calls.

Calls are made on p-values corrected across the benchmark (Benjamini & Hochberg 1995 by default),
so a plain 95% interval of a called comparison does not carry the calls' error control, and one
of a comparison that was not called can exclude zero without contradicting anything. The report
therefore shows, for a comparison called better or worse, its false-coverage-rate adjusted
interval (Benjamini & Yekutieli 2005, "False Discovery Rate-Adjusted Multiple Confidence
Intervals for Selected Parameters", JASA 100:71-81): with R of the m tested comparisons selected
by the procedure at level alpha, each selected interval is the marginal t interval at level
1 - R * alpha / m, which keeps the expected share of non-covering intervals among the selected
ones at most alpha. (Under Holm's correction the selected intervals are Bonferroni's, 1 - alpha / m.)
Every other comparison keeps its unadjusted t interval, marked as such; one that excludes zero
without a call is flagged (:func:`excludes_zero_uncalled`) and the page says why.
"""

from __future__ import annotations

import math

from . import stats
from .records import Comparison, Settings

CALLED = ("better", "worse")
#: What the kind of an interval is called on the page and in the exports.
ADJUSTED, UNADJUSTED = "FCR-adjusted", "unadjusted"


def _tested(c: Comparison, settings: Settings) -> bool:
    return c.p_adjusted is not None and c.n_used >= settings.min_seeds and math.isfinite(c.p_value)


def adjusted_level(comps: list[Comparison], settings: Settings) -> float:
    """The level of a selected comparison's interval: 1 - R alpha / m (Holm: 1 - alpha / m)."""
    m = sum(_tested(c, settings) for c in comps)
    r = sum(c.call in CALLED for c in comps)
    if not m or not r:
        return settings.level
    share = r if settings.correction == "bh" else 1
    return max(1.0 - share * settings.alpha / m, settings.level)


def interval(c: Comparison, comps: list[Comparison], settings: Settings) -> tuple[float, float, str]:
    """(low, high, kind) of the mean paired improvement of ``c``: FCR-adjusted when it is called better or
    worse, else its unadjusted t interval; NaN bounds when it has none (fewer than two paired seeds)."""
    if c.call in CALLED and c.ci is not None:
        ci = stats.t_interval(c.diffs[: c.n_used or c.n], adjusted_level(comps, settings))
        if ci is not None:
            return ci[0], ci[1], ADJUSTED
    if c.ci is None:
        return math.nan, math.nan, ""
    return c.ci[0], c.ci[1], UNADJUSTED


def shown_interval(a, c: Comparison) -> tuple[float, float, str]:
    """:func:`interval` of ``c`` among the analysis ``a``'s comparisons."""
    return interval(c, a.comps, a.settings)


def excludes_zero_uncalled(c: Comparison) -> bool:
    """An unadjusted interval that excludes zero, of a comparison that is not called better or worse:
    it does not survive the correction across the benchmark (or the call's other conditions)."""
    return c.ci is not None and c.call not in CALLED and (c.ci[0] > 0 or c.ci[1] < 0)


def interval_note(comps: list[Comparison], settings: Settings) -> str:
    """The sentence the page and the exports give about their intervals."""
    pct = int(round(settings.level * 100))
    adj = adjusted_level(comps, settings)
    n_flag = sum(excludes_zero_uncalled(c) for c in comps)
    text = (f"Intervals: a comparison called better or worse shows its false-coverage-rate adjusted interval "
            f"(Benjamini & Yekutieli 2005; level {adj:.4g} = 1 - R alpha / m here), which matches the corrected "
            f"calls; every other comparison shows its unadjusted {pct}% t interval.")
    if n_flag:
        text += (f" {n_flag} unadjusted interval(s) exclude zero without a call (marked †): they do not survive "
                 f"the correction across the benchmark's {sum(_tested(c, settings) for c in comps)} tests.")
    return text
