"""Calibration of the decision rules: Monte Carlo on synthetic paired data whose truth is known.

Each check runs the same functions the report uses (:func:`stats.sequential_p`,
:func:`stats.adjust`, :func:`verdicts.decide`, :func:`verdicts.undecided`) on thousands of
simulated benchmarks, vectorised over the repetitions, and asserts the error rates the rules
promise: under the null the share of benchmarks with any better/worse call stays at or below
alpha (plus three Monte Carlo standard errors), with 1 and 20 simultaneous tests, at 3, 6 and
10 paired seeds and with adaptive seeds; intervals cover 93-97%; "no change" is called at most
alpha of the time when the true effect sits on the margin. The power for a 1-SD effect at 6
seeds is checked against the noncentral t and printed (it is quoted in the README).

The headline per variant (intersection-union test across tasks, :mod:`modtransfer.reports.headline`)
is checked the same way, through :func:`headline_kinds`, which calls the report's own
:func:`stats.directional_p`, :func:`stats.sequential_p` and :func:`headline.iut`: under A/A on every
task, "better everywhere" and "worse everywhere" are each declared at most alpha / 2 of the time (the
per-task test is the two-sided one at alpha, i.e. one-sided at alpha / 2) and one or the other at
most alpha, for 1 to 3 tasks, 3 to 12 seeds and with Benjamini-Hochberg across variants; at the least
favourable point (true effects on all but one task) "better everywhere" stays at alpha / 2; "no change
everywhere" stays at alpha with one task on its margin; the power for a one-margin gain on every task
at realistic noise matches :func:`stats.iut_power` and is printed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from modtransfer.reports import stats
from modtransfer.reports.headline import iut
from modtransfer.reports.verdicts import decide, undecided
from modtransfer.run.plan import look_schedule

ALPHA = 0.05
REPS = 4000


def _mc_bound(p: float, reps: int = REPS, k: float = 3.0) -> float:
    """p plus ``k`` Monte Carlo standard errors."""
    return p + k * math.sqrt(p * (1 - p) / reps)


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


# -- the headline: intersection-union test across tasks ---------------------------------------------
#: (margin, SD of the paired differences) per task, as measured on the transfer-cpu study (issue 21)
REAL = {"regression": (0.05, 0.054), "lm": (0.02, 0.027), "mt": (0.5, 0.91)}
#: Monte Carlo standard errors allowed above a bound: several of these rates sit exactly on it
K = 4.0


def headline_kinds(d: np.ndarray, margins: list[float], looks: list[int] | None = None) -> np.ndarray:
    """Headline kinds (reps, V) of paired differences ``d`` (reps, V, T, n), by the report's own functions."""
    p_better, p_worse = stats.directional_p(d, looks)
    p_same = np.stack([stats.sequential_p(d[..., t, :], looks, m)[1] for t, m in enumerate(margins)], axis=-1)
    kinds, _, _ = iut(p_better, p_worse, p_same, ALPHA)
    return kinds


def _tasks(t: int) -> tuple[np.ndarray, np.ndarray]:
    """(margins, SDs of paired differences) of the first ``t`` realistic tasks."""
    vals = list(REAL.values())[:t]
    return np.array([m for m, _ in vals]), np.array([s for _, s in vals])


def _draw(rng: np.random.Generator, effects: np.ndarray, sds: np.ndarray, n: int, reps: int = REPS,
          variants: int = 1) -> np.ndarray:
    """Paired differences (reps, variants, T, n) with the given true mean and SD per task."""
    z = rng.normal(size=(reps, variants, len(sds), n))
    return effects[:, None] + sds[:, None] * z


@pytest.mark.parametrize("n", [3, 6, 12])
@pytest.mark.parametrize("t", [1, 2, 3])
def test_headline_false_positive_rate_under_aa(t: int, n: int) -> None:
    """A/A on every task: each directional claim at most alpha / 2, either of them at most alpha."""
    margins, sds = _tasks(t)
    kinds = headline_kinds(_draw(np.random.default_rng(100 * t + n), 0 * sds, sds, n), list(margins))
    better, worse = np.mean(kinds == "better everywhere"), np.mean(kinds == "worse everywhere")
    assert better <= _mc_bound(ALPHA / 2, REPS, K) and worse <= _mc_bound(ALPHA / 2, REPS, K), (t, n, better, worse)
    assert better + worse <= _mc_bound(ALPHA, REPS, K), (t, n, better + worse)
    if t == 1:  # one task: the headline is the per-task two-sided test, exact at alpha
        assert abs(better + worse - ALPHA) < 4 * math.sqrt(ALPHA * (1 - ALPHA) / REPS), better + worse


def test_headline_false_positive_rate_with_many_variants() -> None:
    """Ten variants, all A/A on three tasks: Benjamini-Hochberg across variants keeps any false claim rare."""
    margins, sds = _tasks(3)
    kinds = headline_kinds(_draw(np.random.default_rng(21), 0 * sds, sds, 6, reps=1500, variants=10), list(margins))
    any_better = np.mean((kinds == "better everywhere").any(axis=1))
    any_worse = np.mean((kinds == "worse everywhere").any(axis=1))
    assert any_better <= _mc_bound(ALPHA / 2, 1500, K) and any_worse <= _mc_bound(ALPHA / 2, 1500, K)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_headline_at_the_least_favourable_point(sign: float) -> None:
    """Large true effects on two of three tasks, none on the third: the claim holds at alpha / 2, and not below."""
    margins, sds = _tasks(3)
    effects = sign * np.array([4.0, 4.0, 0.0]) * sds
    kinds = headline_kinds(_draw(np.random.default_rng(31), effects, sds, 6), list(margins))
    rate = np.mean(kinds == ("better everywhere" if sign > 0 else "worse everywhere"))
    assert rate <= _mc_bound(ALPHA / 2, REPS, K), rate
    assert rate >= ALPHA / 2 - 4 * math.sqrt(ALPHA / 2 * (1 - ALPHA / 2) / REPS), rate   # the bound is attained


def test_headline_is_rarely_better_everywhere_when_the_gain_is_on_some_tasks_only() -> None:
    """One margin better on two of three tasks, no effect on the third, 12 seeds: rarely "better everywhere"."""
    margins, sds = _tasks(3)
    kinds = headline_kinds(_draw(np.random.default_rng(41), np.array([1.0, 1.0, 0.0]) * margins, sds, 12),
                           list(margins))
    assert np.mean(kinds == "better everywhere") <= _mc_bound(ALPHA / 2, REPS, K)
    assert np.mean(kinds == "worse everywhere") <= _mc_bound(ALPHA / 2, REPS, K)


def test_no_change_everywhere_is_rarely_called_with_one_task_on_its_margin() -> None:
    """Two tasks truly unchanged (narrow), one exactly on its margin: "no change everywhere" at most alpha."""
    margins, _ = _tasks(3)
    sds = margins * np.array([0.1, 0.1, 0.3])
    kinds = headline_kinds(_draw(np.random.default_rng(51), np.array([0.0, 0.0, 1.0]) * margins, sds, 12),
                           list(margins))
    rate = np.mean(kinds == "no change everywhere")
    assert rate <= _mc_bound(ALPHA, REPS, K) and rate >= 0.02, rate      # exact at the boundary, not far below


@pytest.mark.parametrize("n", [6, 12, 24])
def test_headline_power_for_a_one_margin_gain_on_every_task(n: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Monte Carlo power of "better everywhere" at realistic noise matches the product of per-task powers."""
    margins, sds = _tasks(3)
    kinds = headline_kinds(_draw(np.random.default_rng(61 + n), margins, sds, n), list(margins))
    mc = float(np.mean(kinds == "better everywhere"))
    analytic = stats.iut_power(list(margins), list(sds), n, ALPHA)
    assert abs(mc - analytic) < 4 * math.sqrt(max(analytic * (1 - analytic), 1e-4) / REPS) + 1e-3, (n, mc, analytic)
    per_task = [stats.iut_power([m], [s], n, ALPHA) for m, s in zip(margins, sds, strict=True)]
    assert analytic == pytest.approx(math.prod(per_task))
    with capsys.disabled():
        print(f"\n[calibration] headline power, one margin better on regression, lm and mt (margin / SD "
              f"{', '.join(f'{m / s:.2f}' for m, s in zip(margins, sds, strict=True))}) at n={n}: "
              f"Monte Carlo {mc:.3f}, analytic {analytic:.3f} (per task {', '.join(f'{p:.2f}' for p in per_task)})")


def test_headline_direction_agrees_with_the_interval_and_coverage_holds() -> None:
    """Better in the headline exactly when the task's 1 - alpha interval is above 0; the intervals cover 93-97%."""
    margins, sds = _tasks(3)
    rng = np.random.default_rng(71)
    effects = np.array([0.5, -0.5, 0.0]) * sds
    d = _draw(rng, effects, sds, 6)[:, 0]                              # (reps, T, n)
    p_better, p_worse = stats.directional_p(d)
    mean, se, _, _ = stats.paired_t(d)
    from scipy import stats as sps

    half = sps.t.ppf(1 - ALPHA / 2, 5) * se
    assert np.array_equal(p_better < ALPHA, mean - half > 0) and np.array_equal(p_worse < ALPHA, mean + half < 0)
    cover = np.mean((mean - half <= effects) & (effects <= mean + half), axis=0)
    assert ((0.93 <= cover) & (cover <= 0.97)).all(), cover
    _, _, _, p_two = stats.paired_t(d)
    assert np.allclose(np.where(mean > 0, p_better, p_worse), p_two)   # the per-task call's own p, split by sign


@pytest.mark.slow
@pytest.mark.parametrize("looks", [None, [3, 6, 9, 12]])
def test_headline_false_positive_rate_grid(looks: list[int] | None) -> None:
    """A/A over 1-5 tasks, 3-12 seeds and 1 or 20 variants, fixed and sequential looks: every rate within bounds."""
    rng = np.random.default_rng(81)
    for t in range(1, 6):
        sds = rng.uniform(0.5, 2.0, size=t)
        for n in (3, 4, 6, 9, 12):
            for variants, reps in ((1, 10_000), (20, 1000)):
                if looks is not None and n != 12:
                    continue
                kinds = headline_kinds(_draw(rng, 0 * sds, sds, n, reps, variants), list(sds), looks)
                better = np.mean((kinds == "better everywhere").any(axis=1))
                worse = np.mean((kinds == "worse everywhere").any(axis=1))
                assert better <= _mc_bound(ALPHA / 2, reps, K) and worse <= _mc_bound(ALPHA / 2, reps, K), (t, n, variants)
