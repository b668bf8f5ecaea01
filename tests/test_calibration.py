"""Calibration of the decision rules: Monte Carlo on synthetic paired data whose truth is known.

Each check runs the same functions the report uses (:func:`stats.sequential_p`,
:func:`stats.adjust`, :func:`verdicts.decide`, :func:`verdicts.undecided`) on thousands of
simulated benchmarks, vectorised over the repetitions, and asserts the error rates the rules
promise: under the null the share of benchmarks with any better/worse call stays at or below
alpha (plus three Monte Carlo standard errors), with 1 and 20 simultaneous tests, at 3, 6 and
10 paired seeds and with adaptive seeds; intervals cover 93-97%; "no change" is called at most
alpha of the time when the true effect sits on the margin. The power for a 1-SD effect at 6
seeds is checked against the noncentral t and printed (it is quoted in the README).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from modtransfer.reports import stats
from modtransfer.reports.verdicts import decide, undecided
from modtransfer.run.plan import look_schedule

ALPHA = 0.05
REPS = 4000


def _mc_bound(p: float, reps: int = REPS) -> float:
    """p plus three Monte Carlo standard errors."""
    return p + 3.0 * math.sqrt(p * (1 - p) / reps)


def family_calls(d: np.ndarray, looks: list[int] | None, margin: float, n_used: np.ndarray | None = None
                 ) -> np.ndarray:
    """Calls (reps, m) for paired differences ``d`` (reps, m, n), each test using its first ``n_used`` values.

    Mirrors :func:`modtransfer.reports.analysis.compare`: sequential p per test, Benjamini-Hochberg
    across the m tests of a benchmark (separately for the equivalence tests), then :func:`decide`.
    """
    reps, m, n = d.shape
    n_used = np.full((reps, m), n) if n_used is None else n_used
    p = np.full((reps, m), np.nan)
    peq = np.full((reps, m), np.nan)
    mean = np.full((reps, m), np.nan)
    for k in np.unique(n_used):
        sel = n_used == k
        pk, qk, used = stats.sequential_p(d[sel][:, :k], looks, margin)
        p[sel], peq[sel] = pk, qk
        mean[sel] = d[sel][:, :used].mean(axis=-1)
    calls = np.empty((reps, m), dtype=object)
    for r in range(reps):
        pa = stats.adjust(p[r], "bh")
        qa = stats.adjust(peq[r], "bh")
        for j in range(m):
            calls[r, j] = decide(float(mean[r, j]), float(pa[j]), float(qa[j]), ALPHA)
    return calls


def adaptive_calls(d: np.ndarray, looks: list[int], margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Run the adaptive design on pre-drawn data (reps, m, max): add a round only where the call is undecided."""
    reps, m, _ = d.shape
    n_used = np.full((reps, m), looks[0])
    calls = family_calls(d, looks, margin, n_used)
    for nxt in looks[1:]:
        grow = np.vectorize(undecided)(calls) & (n_used < nxt)
        if not grow.any():
            break
        n_used = np.where(grow, nxt, n_used)
        calls = family_calls(d, looks, margin, n_used)
    return calls, n_used


def _null(rng: np.random.Generator, m: int, n: int, reps: int = REPS) -> np.ndarray:
    return rng.normal(0.0, 1.0, size=(reps, m, n))


@pytest.mark.parametrize("m", [1, 20])
@pytest.mark.parametrize("n", [3, 6, 10])
def test_false_positive_rate_fixed_seeds(n: int, m: int) -> None:
    rng = np.random.default_rng(1000 * n + m)
    calls = family_calls(_null(rng, m, n, REPS if m == 1 else 1500), None, margin=0.5)
    called = np.isin(calls, ["better", "worse"])
    fwer = called.any(axis=1).mean()          # under the complete null BH's FDR equals this
    per_test = called.mean()
    reps = calls.shape[0]
    assert fwer <= _mc_bound(ALPHA, reps), (n, m, fwer)
    assert per_test <= _mc_bound(ALPHA, reps), (n, m, per_test)


@pytest.mark.parametrize("m", [1, 20])
def test_false_positive_rate_adaptive_seeds(m: int) -> None:
    looks = look_schedule(3, 12)
    assert looks == [3, 6, 9, 12] and look_schedule(3, 10, 4) == [3, 7, 10]
    rng = np.random.default_rng(77 + m)
    reps = REPS if m == 1 else 1000
    calls, n_used = adaptive_calls(_null(rng, m, 12, reps), looks, margin=0.5)
    called = np.isin(calls, ["better", "worse"])
    assert called.any(axis=1).mean() <= _mc_bound(ALPHA, reps)
    assert called.mean() <= _mc_bound(ALPHA, reps)
    assert (n_used > 3).any() and (n_used == 12).any()   # rounds really were added


def test_false_positive_rate_heavy_tailed_differences() -> None:
    """Student t with 3 degrees of freedom: the t test stays at or below alpha (it is conservative there)."""
    rng = np.random.default_rng(5)
    d = rng.standard_t(3, size=(REPS, 1, 6))
    calls = family_calls(d, None, margin=0.5)
    assert np.isin(calls, ["better", "worse"]).mean() <= _mc_bound(ALPHA)


@pytest.mark.parametrize("n", [3, 6, 10])
def test_interval_coverage(n: int) -> None:
    rng = np.random.default_rng(n)
    truth = 0.7
    d = rng.normal(truth, 2.0, size=(REPS, n))
    mean, se, _, _ = stats.paired_t(d)
    q = stats.t_interval(d[0], 0.95)
    assert q is not None and q[0] < mean[0] < q[1]
    from scipy import stats as sps

    half = sps.t.ppf(0.975, n - 1) * se
    cover = np.mean((mean - half <= truth) & (truth <= mean + half))
    assert 0.93 <= cover <= 0.97, cover
    # the interval the report prints is the same one
    lo, hi = stats.t_interval(d[1], 0.95)
    assert lo == pytest.approx(mean[1] - half[1]) and hi == pytest.approx(mean[1] + half[1])


@pytest.mark.parametrize("looks", [None, [3, 6, 9, 12]])
def test_no_change_is_rarely_called_when_the_effect_is_on_the_margin(looks: list[int] | None) -> None:
    rng = np.random.default_rng(11)
    margin = 0.5
    d = rng.normal(margin, 1.0, size=(REPS, 1, 12))
    if looks is None:
        calls = family_calls(d, None, margin)
        # the equivalence test alone is exact at the boundary: its rejection rate is alpha, not far below
        # (with a narrow interval, so that the far side of the margin plays no part)
        _, peq, _ = stats.sequential_p(rng.normal(margin, 0.2, size=(REPS, 12)), None, margin)
        assert 0.035 <= np.mean(peq < ALPHA) <= _mc_bound(ALPHA)
    else:
        calls, _ = adaptive_calls(d, looks, margin)
    assert np.mean(calls == "no change") <= _mc_bound(ALPHA)


def test_no_change_is_called_for_a_null_effect_with_a_wide_margin() -> None:
    """The equivalence test has power: a true zero with margin 2 SD is called "no change" most of the time."""
    rng = np.random.default_rng(12)
    calls = family_calls(rng.normal(0.0, 1.0, size=(1000, 1, 10)), None, margin=2.0)
    assert np.mean(calls == "no change") > 0.9


def test_power_for_a_one_sd_effect_at_six_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    """Power of one test (m = 1) and of one true effect among 20 tests, for Δ = 1 SD of the paired differences."""
    analytic = stats.power_paired_t(1.0, 1.0, 6, ALPHA)
    rng = np.random.default_rng(3)
    calls = family_calls(rng.normal(1.0, 1.0, size=(REPS, 1, 6)), None, margin=0.5)
    mc = np.mean(calls == "better")
    assert abs(mc - analytic) < 4 * math.sqrt(analytic * (1 - analytic) / REPS), (mc, analytic)
    d = rng.normal(0.0, 1.0, size=(1000, 20, 6))
    d[:, 0] += 1.0
    calls20 = family_calls(d, None, margin=0.5)
    power20 = np.mean(calls20[:, 0] == "better")
    assert power20 < mc  # correction for 19 other tests costs power
    adaptive, _ = adaptive_calls(rng.normal(1.0, 1.0, size=(REPS, 1, 12)), [3, 6, 9, 12], margin=0.5)
    power_adaptive = np.mean(adaptive == "better")
    with capsys.disabled():
        print(f"\n[calibration] power for a 1-SD paired effect: n=6 one test {mc:.2f} (noncentral t {analytic:.2f}); "
              f"n=6 among 20 tests (BH) {power20:.2f}; adaptive 3..12 seeds {power_adaptive:.2f}")
    assert power_adaptive > mc  # up to 12 seeds finds more than a fixed 6


def test_smallest_detectable_effect_and_seeds_needed() -> None:
    sd = 1.0
    e6 = stats.detectable_effect(sd, 6)
    assert stats.power_paired_t(e6, sd, 6) == pytest.approx(0.8, abs=1e-4)
    assert stats.detectable_effect(sd, 12) < e6 < stats.detectable_effect(sd, 3)
    assert stats.detectable_effect(sd, 6, alpha=ALPHA / 20) > e6   # more tests, bigger effect needed
    n = stats.seeds_needed(e6, sd)
    assert n == 6
    assert stats.seeds_needed(1e-6, sd) is None


def test_spending_weights_and_sequential_p() -> None:
    w = stats.spending_weights([3, 6, 9, 12])
    assert w.sum() == pytest.approx(1.0) and (w > 0).all() and w[0] > w[-1]
    assert stats.spending_weights([6]) == pytest.approx([1.0])
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.05, 0.4, 0.1])
    p_fixed, _, used = stats.sequential_p(d, None)
    assert used == 7 and p_fixed == pytest.approx(stats.paired_t(d)[3])
    p_seq, _, used = stats.sequential_p(d, [3, 6, 9, 12])
    assert used == 6  # the 7th seed waits for the round to complete
    expect = min(stats.paired_t(d[:3])[3] / w[0], stats.paired_t(d[:6])[3] / w[1])
    assert p_seq == pytest.approx(min(1.0, expect))
