"""Do tasks agree on which variants help? Kendall's tau between tasks' rankings of variants.

For every pair of conditions, tau-b (Kendall 1945) between the variants' mean paired
differences on each. Intervals: a paired bootstrap over seeds (Efron 1979), resampling the
seeds of each condition once per replicate and using the same draw for every variant, since
all variants share the baseline's seeds. Overall figures: the mean pairwise tau (with the same
bootstrap), and leave-one-task-out agreement: how well the mean standardised ranking on the
other tasks predicts the ranking on the held-out one. With hyper-parameter axes each setting of
a task is a column; the overall figures then use only pairs of *different* tasks, and the
leave-one-out prediction leaves out every setting of the held-out task. A variant that is
unstable on a task is left out of that task's ranking.

A bootstrap over n seeds can only draw C(2n-1, n) different resamples (multisets of n seeds): 10
for 3 seeds, 35 for 4, 126 for 5. With few of them the percentile interval is a handful of
repeated values and reads as more evidence than it is, so an interval is given only when every
task it involves has at least :data:`MIN_DISTINCT_RESAMPLES` distinct resamples (5 or more seeds);
otherwise it is omitted and the reason is kept (:attr:`Agreement.seeds_note`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import stats
from .records import Comparison, Settings

#: fewest distinct bootstrap resamples of each task's seeds for an interval to be shown
MIN_DISTINCT_RESAMPLES = 100


@dataclass
class Agreement:
    labels: list[str]
    tau: np.ndarray                                        # (C, C), NaN where undefined
    pairs: list[dict] = field(default_factory=list)        # a, b, n_variants, tau, ci, distinct_resamples, across
    mean_tau: float = math.nan
    mean_ci: tuple[float, float] | None = None
    loo: dict[str, float] = field(default_factory=dict)    # held-out label -> tau
    loo_mean: float = math.nan
    seeds_note: str = ""


def distinct_resamples(n_seeds: int) -> int:
    """How many different resamples (multisets of ``n_seeds`` drawn with replacement) a bootstrap has."""
    return math.comb(2 * n_seeds - 1, n_seeds) if n_seeds > 0 else 0


def enough_resamples(n_seeds: int) -> bool:
    """Whether a bootstrap over ``n_seeds`` seeds has enough distinct resamples for an interval."""
    return distinct_resamples(n_seeds) >= MIN_DISTINCT_RESAMPLES


def fewest_seeds_for_interval() -> int:
    """The fewest seeds whose bootstrap has :data:`MIN_DISTINCT_RESAMPLES` distinct resamples."""
    n = 1
    while not enough_resamples(n):
        n += 1
    return n


def omitted_note(n_seeds: int) -> str:
    """Why intervals are left out when the task with the fewest seeds has ``n_seeds``."""
    if n_seeds < 2:
        return "a task has fewer than two seeds: no bootstrap interval can be given there"
    return (f"bootstrap intervals omitted where a task has fewer than {fewest_seeds_for_interval()} seeds: "
            f"{n_seeds} seeds give only {distinct_resamples(n_seeds)} distinct resamples, and an interval is "
            f"shown only with at least {MIN_DISTINCT_RESAMPLES} per task")


def _diff_matrices(comps: list[Comparison], variants: list[str], labels: list[str]) -> list[np.ndarray]:
    """Per condition, a (variants, seeds) array of signed differences, NaN where unpaired."""
    out = []
    for lab in labels:
        cs = {c.variant: c for c in comps if c.cond.label == lab}
        seeds = sorted({s for c in cs.values() for s in c.seeds})
        col = {s: j for j, s in enumerate(seeds)}
        m = np.full((len(variants), max(1, len(seeds))), np.nan)
        for i, v in enumerate(variants):
            c = cs.get(v)
            if c is None or c.call == "unstable":
                continue
            for s, d in zip(c.seeds, c.diffs, strict=True):
                m[i, col[s]] = d
        out.append(m)
    return out


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / sd if sd > 0 else np.zeros_like(x)


def agreement(comps: list[Comparison], settings: Settings = Settings(), n_boot: int = 2000) -> Agreement:
    """Pairwise and overall agreement between the conditions in ``comps``."""
    group = {c.cond.label: c.cond.group for c in comps}
    labels = sorted(group)
    variants = sorted({c.variant for c in comps})
    mats = _diff_matrices(comps, variants, labels)
    point = np.stack([_nanmean(m, axis=1) for m in mats]) if mats else np.zeros((0, len(variants)))
    n_c = len(labels)
    tau = np.full((n_c, n_c), np.nan)
    for i in range(n_c):
        tau[i, i] = 1.0
    result = Agreement(labels, tau)
    if n_c < 2 or len(variants) < 2:
        return result
    rng = settings.rng("agreement")
    boots = []
    for m in mats:
        idx = rng.integers(0, m.shape[1], size=(n_boot, m.shape[1]))
        boots.append(_nanmean(m[:, idx], axis=2).T)           # (B, V)
    n_seeds = [m.shape[1] if np.isfinite(m).any() else 0 for m in mats]
    pair_taus = []
    for i, j in itertools.combinations(range(n_c), 2):
        t = stats.kendall_tau(point[i], point[j])
        tau[i, j] = tau[j, i] = t
        bt = stats.kendall_tau_batch(boots[i], boots[j])
        pair_taus.append(bt)
        common = int(np.sum(np.isfinite(point[i]) & np.isfinite(point[j])))
        fewest = min(n_seeds[i], n_seeds[j])
        ci = stats.quantile_interval(bt, settings.level) if enough_resamples(fewest) else None
        result.pairs.append({"a": labels[i], "b": labels[j], "n_variants": common, "tau": t, "ci": ci,
                             "distinct_resamples": distinct_resamples(fewest),
                             "across": group[labels[i]] != group[labels[j]]})
    use = [k for k, p in enumerate(result.pairs) if p["across"]] or list(range(len(result.pairs)))
    finite = [result.pairs[k]["tau"] for k in use if math.isfinite(result.pairs[k]["tau"])]
    result.mean_tau = float(np.mean(finite)) if finite else math.nan
    if all(result.pairs[k]["ci"] is not None for k in use):
        result.mean_ci = stats.quantile_interval(_nanmean(np.stack([pair_taus[k] for k in use]), axis=0),
                                                 settings.level)
    if any(p["ci"] is None for p in result.pairs):
        result.seeds_note = omitted_note(min(n_seeds))
    z = np.stack([_zscore(p) for p in point])
    for i, lab in enumerate(labels):
        rest = [k for k in range(n_c) if group[labels[k]] != group[lab]] or [k for k in range(n_c) if k != i]
        result.loo[lab] = stats.kendall_tau(_nanmean(z[rest], axis=0), point[i])
    finite_loo = [t for t in result.loo.values() if math.isfinite(t)]
    result.loo_mean = float(np.mean(finite_loo)) if finite_loo else math.nan
    return result
