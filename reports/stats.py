"""Small-sample statistics for paired seeds: bootstrap intervals, sign-flip tests, corrections, Kendall tau.

Plain numpy, no scipy. Every random draw takes an explicit ``numpy.random.Generator`` so
a report is reproducible bit for bit.

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
