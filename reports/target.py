"""Time to a target, and performance profiles across tasks.

A modification can leave the final metric alone and still reach it sooner; the final-metric calls
do not see that. Following MLCommons AlgoPerf (Dahl et al. 2023, "Benchmarking Neural Network
Training Algorithms", arXiv 2306.07179; Kasimbeg et al. 2025, arXiv 2502.15015), every cell is
scored by when it first reaches a fixed validation target, and the arms are compared across tasks
by performance profiles (Dolan & Moré 2002, "Benchmarking optimization software with performance
profiles", Math. Programming 91).

- **Target** of a condition (a task under one budget and setting): the task's declared
  ``time_target`` if it has one, else the baseline's worst final value in that condition: the level
  every baseline seed reached by the end of its budget, as AlgoPerf's targets are levels its
  baselines reach reliably. (The baseline's *median* final value would leave half of its own seeds
  short of the target by construction, and its median time at the very end of the budget or
  missed, so a profile would compare every arm with a baseline that barely finishes.)
- **Time to target** of a cell: the first step at which its evaluation curve reaches the target,
  linearly interpolated between the two evaluations around the crossing (a target already met at
  the first evaluation counts at that evaluation's step: earlier points were not measured), or
  *not reached* (infinite, as AlgoPerf counts a miss). Wall time is that step times the cell's
  seconds per training step (``train_s / steps``; evaluation time is not counted).
- **Ratio** of an arm to the baseline in a condition: per paired seed, the variant's steps over the
  baseline's; summarised by the geometric mean over the seeds where both reached the target, with a
  t interval on the log ratios, beside how many seeds of each arm reached it (a miss is not
  averaged: it is counted).
- **Performance profile**: per task, each arm's time is its median over seeds (infinite when half
  or more of its seeds missed: a miss sorts last); ``r = time / fastest arm's time``; ``rho(tau)`` is the share of
  tasks with ``r <= tau``; the score integrates ``rho`` over ``tau`` in ``[1, 4]`` divided by 3
  (1 = fastest on every task, 0 = never within 4x of the fastest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats

TAU_MAX = 4.0


def reach_step(curve: list[dict[str, Any]], metric: str, target: float, higher_is_better: bool) -> float:
    """First (interpolated) step at which ``curve``'s ``metric`` reaches ``target``; ``inf`` if never."""
    points = [(float(p["step"]), float(p[metric])) for p in curve or []
              if p.get(metric) is not None and math.isfinite(float(p[metric]))]
    sign = 1.0 if higher_is_better else -1.0
    prev: tuple[float, float] | None = None
    for step, value in points:
        if sign * (value - target) >= 0:
            if prev is None or sign * (value - prev[1]) <= 0:
                return step
            frac = (target - prev[1]) / (value - prev[1])
            return prev[0] + frac * (step - prev[0])
        prev = (step, value)
    return math.inf


def seconds_per_step(row: dict[str, Any]) -> float:
    """A cell's training seconds per step (NaN when not recorded)."""
    steps, train_s = row.get("steps") or 0, row.get("train_s")
    return float(train_s) / steps if steps and train_s else math.nan


@dataclass
class ArmTimes:
    """Steps (and seconds) to the target per seed of one arm in one condition."""

    steps: dict[int, float] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)

    def median_steps(self) -> float:
        """Median over seeds, infinite when half or more of the seeds missed (a miss sorts last)."""
        return _median(self.steps)

    def median_seconds(self) -> float:
        """Median training seconds to the target over seeds, by the same rule (NaN where no time was recorded)."""
        return _median(self.seconds)


def _median(by_seed: dict[int, float]) -> float:
    values = sorted(by_seed.values(), key=lambda v: (math.isnan(v), v))
    if not values:
        return math.nan
    return float(values[(len(values) - 1) // 2]) if len(values) % 2 else _mid(values)


def _mid(values: list[float]) -> float:
    a, b = values[len(values) // 2 - 1], values[len(values) // 2]
    return math.inf if math.isinf(b) else (a + b) / 2


@dataclass
class TargetCondition:
    """One condition's target and every arm's times."""

    task: str
    label: str
    metric: str
    higher_is_better: bool
    target: float
    source: str                       # "task" (declared) or "baseline median"
    arms: dict[str, ArmTimes] = field(default_factory=dict)


def condition_times(cond: Any, rows: list[dict[str, Any]], declared: float | None = None) -> TargetCondition | None:
    """Times to target of every arm of ``cond`` (``rows`` are that condition's cells); None without a target."""
    done = [r for r in rows if r["status"] == "done" and r.get("primary_value") is not None
            and math.isfinite(r["primary_value"])]
    base = [r["primary_value"] for r in done if r["variant"] == "baseline"]
    if declared is not None:
        target, source = float(declared), "task"
    elif base:
        target = float(min(base) if cond.higher_is_better else max(base))
        source = "baseline's worst seed"
    else:
        return None
    out = TargetCondition(cond.task, cond.label, cond.metric, cond.higher_is_better, target, source)
    for r in rows:
        arm = out.arms.setdefault(r["variant"], ArmTimes())
        step = reach_step(r.get("curve") or [], cond.metric, target, cond.higher_is_better) \
            if r["status"] in ("done", "timeout") else math.inf
        arm.steps[r["seed"]] = step
        arm.seconds[r["seed"]] = step * seconds_per_step(r) if math.isfinite(step) else math.inf
    return out


@dataclass
class TargetRatio:
    """Steps to target of a variant over the baseline's, paired by seed."""

    variant: str
    n_pairs: int
    n_both: int
    variant_reached: int
    baseline_reached: int
    ratio: float                      # geometric mean over seeds where both reached
    ci: tuple[float, float] | None    # t interval of the geometric mean (None under 2 pairs)


def ratio_to_baseline(tc: TargetCondition, variant: str, level: float = 0.95) -> TargetRatio | None:
    base, arm = tc.arms.get("baseline"), tc.arms.get(variant)
    if base is None or arm is None:
        return None
    seeds = sorted(set(base.steps) & set(arm.steps))
    logs = [math.log(arm.steps[s] / base.steps[s]) for s in seeds
            if math.isfinite(arm.steps[s]) and math.isfinite(base.steps[s]) and arm.steps[s] > 0 and base.steps[s] > 0]
    ratio = math.exp(float(np.mean(logs))) if logs else math.nan
    ci = None
    if len(logs) >= 2:
        lo, hi = stats.t_interval(logs, level)
        ci = (math.exp(lo), math.exp(hi))
    return TargetRatio(variant, len(seeds), len(logs), sum(math.isfinite(arm.steps[s]) for s in seeds),
                       sum(math.isfinite(base.steps[s]) for s in seeds), ratio, ci)


def profile(times: dict[str, dict[str, float]], taus: np.ndarray | None = None) -> dict[str, Any]:
    """Performance profiles of arms over tasks.

    ``times``: task -> arm -> time (steps or seconds; ``inf`` = missed). Returns ``taus``, per arm its
    ``rho`` (share of tasks within ``tau`` of the fastest, for each tau), its ``ratios`` per task, and its
    ``score`` (the integral of rho over [1, TAU_MAX] over TAU_MAX - 1, exact, not sampled).
    """
    taus = np.linspace(1.0, TAU_MAX, 121) if taus is None else taus
    arms = sorted({a for per in times.values() for a in per})
    ratios: dict[str, dict[str, float]] = {a: {} for a in arms}
    for task, per in times.items():
        best = min((t for t in per.values() if math.isfinite(t) and t > 0), default=math.inf)
        for arm in arms:
            t = per.get(arm, math.inf)
            ratios[arm][task] = t / best if math.isfinite(best) and math.isfinite(t) else math.inf
    n = len(times)
    out: dict[str, Any] = {"taus": taus.tolist(), "arms": {}}
    for arm in arms:
        r = list(ratios[arm].values())
        rho = [sum(x <= tau for x in r) / n for tau in taus] if n else []
        score = sum(max(0.0, TAU_MAX - max(1.0, x)) for x in r if math.isfinite(x)) / ((TAU_MAX - 1.0) * n) if n else math.nan
        out["arms"][arm] = {"rho": rho, "ratios": ratios[arm], "score": score}
    return out
