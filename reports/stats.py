"""Small-sample statistics for paired seeds: t tests and intervals, equivalence, sequential looks, power.

Distributions come from scipy. Every random draw takes an explicit ``numpy.random.Generator``
so a report is reproducible bit for bit. Functions on paired differences work on the last
axis of an array, so a Monte Carlo check can run thousands of benchmarks in one call.

- Paired t test and t interval (Student 1908, "The probable error of a mean"): the primary
  test. Exact for normal differences at any n >= 2, which the sign-flip test is not able to
  match at small n (its smallest p is 2 / 2**n).
- Two one-sided tests for equivalence, TOST (Schuirmann 1987, J. Pharmacokinet. Biopharm.
  15:657; Lakens 2017, Soc. Psychol. Personal. Sci. 8:355): "no change" is shown, not
  assumed, when the mean difference is significantly inside +-margin.
- Group-sequential looks with alpha spending (Lan & DeMets 1983, Biometrika 70:659), with
  the Pocock-type spending function alpha * ln(1 + (e - 1) t) (Kim & DeMets 1987). Each look
  k gets the increment w_k of the spent error; a pair's sequential p is min_k p_k / w_k,
  valid by the union bound whatever the correlation between looks and whatever rule stops
  adding seeds (conservative, never anti-conservative).
- Power and the smallest detectable effect of a paired t test from the noncentral t
  distribution (Cohen 1988, "Statistical Power Analysis", ch. 2).
- Directional p-values (the two-sided paired t test split by sign) and the power of the
  intersection-union headline across tasks (Berger 1982, Technometrics 24(4):295; Berger & Hsu
  1996, Statistical Science 11(4):283): the product of the per-task one-sided powers.
- Percentile bootstrap of the mean (Efron 1979; Efron & Tibshirani 1993, ch. 13), kept for
  the rank-agreement intervals.

- Percentile bootstrap of the mean (Efron 1979, "Bootstrap methods: another look at the
  jackknife"; Efron & Tibshirani 1993, ch. 13).
- Paired sign-flip permutation test (Fisher 1935, "The Design of Experiments", s. 21; Good 2005,
  "Permutation, Parametric and Bootstrap Tests of Hypotheses"): under H0 "no effect" each
  paired difference is symmetric about zero, so every sign pattern is equally likely.
  Exact enumeration up to ``max_exact`` pairs; Monte Carlo beyond, with the +1 correction of
  Phipson & Smyth 2010 so that p is never 0.
- Holm 1979 step-down (FWER) and Benjamini & Hochberg 1995 step-up (FDR) adjusted p-values.
- Kendall's tau-b (Kendall 1945, "The treatment of ties in ranking problems").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

ArrayLike = Sequence[float] | np.ndarray


def bootstrap_means(x: ArrayLike, rng: np.random.Generator, n_boot: int = 10_000) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``x``."""
    a = np.asarray(x, dtype=float)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    return a[idx].mean(axis=1)


def bootstrap_ci(x: ArrayLike, rng: np.random.Generator, *, level: float = 0.95,
                 n_boot: int = 10_000) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``x``; None with fewer than two values.

    With one value there is no spread to resample, so no interval can be given.
    """
    a = np.asarray(x, dtype=float)
    if a.size < 2:
        return None
    means = bootstrap_means(a, rng, n_boot)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def sign_flip_pvalue(d: ArrayLike, rng: np.random.Generator | None = None, *, max_exact: int = 16,
                     n_perm: int = 20_000) -> float:
    """Two-sided p-value of H0 "mean paired difference is 0" by flipping the signs of ``d``.

    p = share of sign patterns whose |mean| is at least the observed |mean|. With n pairs the
    smallest attainable exact p is 2 / 2**n (see :func:`min_sign_flip_p`).
    """
    a = np.asarray(d, dtype=float)
    n = a.size
    if n == 0:
        return float("nan")
    observed = abs(a.mean())
    if observed == 0.0:
        return 1.0
    tol = 1e-12 * max(1.0, float(np.abs(a).max()))
    if n <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs(signs @ a) / n
        return float(np.mean(stats >= observed - tol))
    if rng is None:
        raise ValueError("a Generator is needed for the Monte Carlo sign-flip test")
    signs = rng.choice((1.0, -1.0), size=(n_perm, n))
    stats = np.abs(signs @ a) / n
    return float((1 + np.sum(stats >= observed - tol)) / (1 + n_perm))


def min_sign_flip_p(n: int) -> float:
    """Smallest two-sided p the exact sign-flip test can give with ``n`` pairs."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0**n)


def holm(p: ArrayLike) -> np.ndarray:
    """Holm 1979 step-down adjusted p-values (family-wise error rate)."""
    a = np.asarray(p, dtype=float)
    m = a.size
    order = np.argsort(a, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * a[i])
        adj[i] = min(1.0, running)
    return adj


def benjamini_hochberg(p: ArrayLike) -> np.ndarray:
    """Benjamini & Hochberg 1995 step-up adjusted p-values (false discovery rate).

    Valid under independence and under positive regression dependence (Benjamini & Yekutieli
    2001), the case of several variants each compared with one shared baseline.
    """
    a = np.asarray(p, dtype=float)
    m = a.size
    order = np.argsort(a, kind="stable")
    adj = np.empty(m)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, a[i] * m / (rank + 1))
        adj[i] = running
    return adj


def adjust(p: ArrayLike, method: str) -> np.ndarray:
    """Adjusted p-values by ``method`` ("holm" or "bh")."""
    if method == "holm":
        return holm(p)
    if method == "bh":
        return benjamini_hochberg(p)
    raise ValueError(f"unknown correction {method!r}; use 'holm' or 'bh'")


def kendall_tau(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b of two equally long sequences; NaN where undefined (< 2 items or all tied)."""
    return float(kendall_tau_batch(np.asarray(x, dtype=float)[None, :], np.asarray(y, dtype=float)[None, :])[0])


def kendall_tau_batch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b row by row of two (B, n) arrays; NaN entries of a row are left out of that row."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    both = ok[:, :, None] & ok[:, None, :]
    sx = np.where(both, np.nan_to_num(sx), 0.0)
    sy = np.where(both, np.nan_to_num(sy), 0.0)
    concord = (sx * sy).sum(axis=(1, 2)) / 2.0
    nx = (sx != 0).sum(axis=(1, 2)) / 2.0
    ny = (sy != 0).sum(axis=(1, 2)) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = concord / np.sqrt(nx * ny)
    return np.where((nx > 0) & (ny > 0), tau, np.nan)


def quantile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the finite ``values``; None when fewer than two are finite."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [tail, 1.0 - tail])
    return float(lo), float(hi)


def sample_std(x: ArrayLike) -> float:
    """Seed-to-seed standard deviation (ddof = 1); NaN with fewer than two values."""
    a = np.asarray(x, dtype=float)
    return float(a.std(ddof=1)) if a.size >= 2 else math.nan


# -- paired t, equivalence, sequential looks, power ------------------------------------------
def paired_t(d: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, standard error, t, two-sided p) of H0 "mean difference is 0", along the last axis.

    A row with zero spread has t = +-inf (p = 0) when its mean is non-zero and p = 1 when it
    is zero; with fewer than two values every output is NaN.
    """
    a = np.asarray(d, dtype=float)
    n = a.shape[-1]
    if n < 2:
        nan = np.full(a.shape[:-1], np.nan)
        return a.mean(axis=-1) if n else nan, nan, nan, nan
    mean = a.mean(axis=-1)
    se = a.std(axis=-1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
    p = 2.0 * sps.t.sf(np.abs(t), n - 1)
    return mean, se, t, p


def t_interval(d: ArrayLike, level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided ``level`` t interval of the mean of ``d``; None with fewer than two values."""
    a = np.asarray(d, dtype=float)
    if a.size < 2:
        return None
    mean, se, _, _ = paired_t(a)
    q = float(sps.t.ppf(0.5 + level / 2.0, a.size - 1))
    return float(mean - q * se), float(mean + q * se)


def tost_pvalue(d: ArrayLike, margin: float) -> np.ndarray:
    """TOST p of H0 "|mean difference| >= margin" (small p = shown to be inside +-margin).

    p = max of the two one-sided t tests of mean <= -margin and mean >= +margin; NaN with
    fewer than two values or a margin that is not positive.
    """
    a = np.asarray(d, dtype=float)
    n = a.shape[-1]
    if n < 2 or not margin > 0:
        return np.full(a.shape[:-1], np.nan)
    mean, se, _, _ = paired_t(a)
    safe = np.where(se > 0, se, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo = np.where(se > 0, (mean + margin) / safe, np.where(mean > -margin, np.inf, -np.inf))
        t_hi = np.where(se > 0, (mean - margin) / safe, np.where(mean < margin, -np.inf, np.inf))
    return np.maximum(sps.t.sf(t_lo, n - 1), sps.t.cdf(t_hi, n - 1))


def spending_weights(looks: Sequence[int]) -> np.ndarray:
    """Share of the error rate spent at each look (sums to 1), Pocock-type Lan-DeMets spending.

    Cumulative share at information fraction t = n_k / n_max is ln(1 + (e - 1) t); one look
    gets all of it.
    """
    n = np.asarray(looks, dtype=float)
    cum = np.log1p((math.e - 1.0) * n / n[-1])
    return np.diff(np.concatenate([[0.0], cum]))


def sequential_p(d: ArrayLike, looks: Sequence[int] | None, margin: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """(difference p, equivalence p, seeds used) of paired differences over a look schedule.

    Only the first ``n_k`` values are used at look k (values beyond the last complete look
    wait for the next); each look's p is divided by its spending weight and the smallest
    is kept, capped at 1. ``looks=None`` is a single look at all values (a fixed design).
    Works on the last axis.
    """
    a = np.asarray(d, dtype=float)
    n = a.shape[-1]
    if looks is None:
        looks = [n]
    use = [k for k in looks if k <= n]
    if not use or use[-1] < 2:
        nan = np.full(a.shape[:-1], np.nan)
        return nan, nan.copy(), 0
    w = spending_weights(looks)[: len(use)]
    p_diff = np.ones(a.shape[:-1])
    p_eq = np.ones(a.shape[:-1])
    for k, wk in zip(use, w, strict=True):
        if k < 2:
            continue
        _, _, _, p = paired_t(a[..., :k])
        p_diff = np.minimum(p_diff, p / wk)
        if margin is not None and margin > 0:
            p_eq = np.minimum(p_eq, tost_pvalue(a[..., :k], margin) / wk)
    p_diff = np.minimum(p_diff, 1.0)
    p_eq = np.minimum(p_eq, 1.0) if margin is not None and margin > 0 else np.full(a.shape[:-1], np.nan)
    return p_diff, p_eq, use[-1]


def bh_matrix(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values row by row of a (reps, m) array; NaN entries are left out."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    for i in range(p.shape[0]):
        ok = np.isfinite(p[i])
        if ok.any():
            out[i, ok] = benjamini_hochberg(p[i, ok])
    return out


def power_paired_t(effect: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test at level ``alpha`` for a true mean difference ``effect``."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    df = n - 1
    crit = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    ncp = effect / sd_diff * math.sqrt(n)
    power = float(sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp))
    if not math.isfinite(power):  # scipy's noncentral t loses precision far in the tail
        power = 1.0 if abs(ncp) > crit else 0.0
    return min(1.0, max(0.0, power))


def detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference the two-sided paired t test at ``alpha`` finds with ``power``."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    f = lambda e: power_paired_t(e, sd_diff, n, alpha) - power  # noqa: E731
    hi = sd_diff
    while f(hi) < 0:
        hi *= 2.0
        if hi > 1e6 * sd_diff:
            return math.inf
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-6 * sd_diff))


def seeds_needed(margin: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8,
                 n_max: int = 200) -> int | None:
    """Fewest paired seeds with which an effect of ``margin`` is found with ``power``; None beyond ``n_max``."""
    for n in range(2, n_max + 1):
        if detectable_effect(sd_diff, n, alpha, power) <= margin:
            return n
    return None


def directional_p(d: ArrayLike, looks: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(p of "better", p of "worse") of paired differences, along the last axis, over a look schedule.

    Each is twice the one-sided paired t p-value in that direction (Student 1908), capped at 1: the
    two-sided test at level alpha, split by the sign it rejects with. With a positive mean the "better"
    p equals the two-sided p of :func:`paired_t`; p_better < alpha is exactly the per-task call
    "better" at alpha, i.e. a one-sided test at alpha / 2. Looks are handled as in
    :func:`sequential_p` (each look's p divided by its spending weight, the smallest kept).
    """
    a = np.asarray(d, dtype=float)
    n = a.shape[-1]
    use = [k for k in (looks if looks is not None else [n]) if k <= n]
    if not use or use[-1] < 2:
        return np.full(a.shape[:-1], np.nan), np.full(a.shape[:-1], np.nan)
    w = spending_weights(looks if looks is not None else [n])[: len(use)]
    p_better = np.ones(a.shape[:-1])
    p_worse = np.ones(a.shape[:-1])
    for k, wk in zip(use, w, strict=True):
        if k < 2:
            continue
        _, _, t, _ = paired_t(a[..., :k])
        p_better = np.minimum(p_better, 2.0 * sps.t.sf(t, k - 1) / wk)
        p_worse = np.minimum(p_worse, 2.0 * sps.t.cdf(t, k - 1) / wk)
    return np.minimum(p_better, 1.0), np.minimum(p_worse, 1.0)


def iut_power(effects: Sequence[float], sd_diffs: Sequence[float], n: int | Sequence[int], alpha: float = 0.05,
              family: int = 1) -> float:
    """Power of the headline "better everywhere" for true mean differences ``effects`` (> 0 = better).

    The intersection-union test (Berger 1982) declares it when every task's paired t test rejects in
    the better direction at two-sided level ``alpha / family`` (``family``: the worst case of
    Benjamini-Hochberg across that many variants, one true effect among nulls; 1 = no correction).
    Tasks are trained independently, so the power is the product of the per-task one-sided powers
    P(T > t_{1 - a/2, n-1}) under the noncentral t (Cohen 1988, ch. 2). ``n``: seeds, one for all
    tasks or one per task.
    """
    ns = [n] * len(effects) if isinstance(n, int) else list(n)
    a = alpha / max(1, family)
    power = 1.0
    for e, sd, k in zip(effects, sd_diffs, ns, strict=True):
        if k < 2 or not sd > 0:
            return math.nan
        crit = float(sps.t.ppf(1.0 - a / 2.0, k - 1))
        p = float(sps.nct.sf(crit, k - 1, e / sd * math.sqrt(k)))
        power *= min(1.0, max(0.0, p if math.isfinite(p) else float(e / sd * math.sqrt(k) > crit)))
    return power


def iut_seeds_needed(effects: Sequence[float], sd_diffs: Sequence[float], alpha: float = 0.05, power: float = 0.8,
                     family: int = 1, n_max: int = 200) -> int | None:
    """Fewest paired seeds (the same on every task) for :func:`iut_power` to reach ``power``; None beyond ``n_max``."""
    for n in range(2, n_max + 1):
        if iut_power(effects, sd_diffs, n, alpha, family) >= power:
            return n
    return None
