"""Power before training: the smallest effect a plan can call, per task, from the baseline's seed noise.

For a task with baseline seed SD sigma, a variant's paired differences have SD at most
sqrt(2) * sigma (two independent seed draws; pairing by seed can only lower it). With n paired
seeds and m tests in the benchmark, the smallest true difference the two-sided paired t test
finds with 80% power at level alpha / m is the plan's detectable effect: that is the level
Benjamini-Hochberg applies when one real effect stands among m tests (Cohen 1988 for the
power of the t test; Benjamini & Hochberg 1995 for the step-up thresholds). A plan whose
detectable effect exceeds the task's margin gets a warning with the seeds it would need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import stats
from .analysis import BASELINE, Condition, Settings, learn_gate, usable

POWER = 0.8


@dataclass
class TaskPower:
    task: str
    metric: str
    n: int                     # paired seeds (the largest look with adaptive seeds)
    tests: int                 # variant x condition comparisons in the plan
    noise_sd: float
    noise_source: str
    margin: float
    margin_source: str
    detectable: float          # smallest effect called with 80% power
    seeds_needed: int | None   # seeds for the margin to be detectable (None: over 200, or unknown)
    gate: str = ""             # "not learned" text when the store already shows it

    @property
    def underpowered(self) -> bool:
        return math.isfinite(self.detectable) and math.isfinite(self.margin) and self.detectable > self.margin


def plan_power(tasks: list[str], metrics: dict[str, tuple[str, bool]], n: int, tests: dict[str, int],
               declared: dict[str, dict[str, Any]], margins: dict[str, float], rows: list[dict[str, Any]],
               alpha: float = 0.05) -> list[TaskPower]:
    """One :class:`TaskPower` per task.

    ``metrics``: task -> (primary metric, higher is better); ``tests``: task -> comparisons;
    ``declared``: task -> the task's declarations (margin, noise_sd, and trivial when known);
    ``rows``: this plan's cells already in the store (the baseline's measured noise wins over the
    declared figure when it has two or more seeds).
    """
    m_total = max(1, sum(tests.values()))
    settings = Settings(alpha=alpha, margins=margins, tasks=declared)
    out = []
    for task in tasks:
        metric, hib = metrics.get(task, ("?", False))
        base = [float(r["primary_value"]) for r in rows
                if r["task"] == task and r["variant"] == BASELINE and usable(r) and not r.get("hparams")]
        info = declared.get(task) or {}
        if len(base) >= 2:
            sd, src = stats.sample_std(base), f"measured in this store, {len(base)} baseline seeds"
        elif isinstance(info.get("noise_sd"), int | float) and info["noise_sd"] > 0:
            sd, src = float(info["noise_sd"]), "declared by the task for its default budget (not measured here)"
        else:
            sd, src = math.nan, "unknown"
        margin, msrc = settings.margin(task)
        a = alpha / m_total
        sd_diff = math.sqrt(2.0) * sd
        det = stats.detectable_effect(sd_diff, n, a, POWER) if math.isfinite(sd) else math.nan
        need = stats.seeds_needed(margin, sd_diff, a, POWER) if math.isfinite(sd) and math.isfinite(margin) else None
        gate = ""
        if base:
            g = learn_gate(Condition(task, "", "{}", metric, hib, task), base, settings)
            if g.status == "not learned":
                gate = g.text
        out.append(TaskPower(task, metric, n, tests.get(task, 0), sd, src, margin, msrc, det, need, gate))
    return out


def power_lines(power: list[TaskPower], alpha: float = 0.05) -> list[str]:
    """Lines for ``run --dry-run``: per task the detectable effect, then the warnings."""
    total = sum(p.tests for p in power)
    if total == 0:
        return ["power: the plan has no variant to compare with the baseline, so it makes no call"]
    lines = [f"power (paired t, {int(POWER * 100)}% power, alpha {alpha} / {total} tests):"]
    for p in power:
        det = f"{p.detectable:.3g}" if math.isfinite(p.detectable) else "unknown"
        lines.append(f"  {p.task}: with {p.n} seeds the smallest callable effect is {det} {p.metric}; margin "
                     f"{p.margin:.3g} ({p.margin_source}); baseline seed SD {p.noise_sd:.3g} ({p.noise_source})")
    for p in power:
        if p.n < 3:
            lines.append(f"warning: {p.task}: {p.n} seed(s) give no better/worse/no change call at all; "
                         "use at least 3 (seeds: 6, or seeds: {min: 3, max: 12})")
        elif p.underpowered:
            need = f"about {p.seeds_needed} seeds" if p.seeds_needed else "more than 200 seeds"
            lines.append(f"warning: {p.task}: this plan cannot call effects smaller than {p.detectable:.3g} "
                         f"{p.metric}, above the margin {p.margin:.3g}; it would need {need} (or fewer tests)")
        if p.gate:
            lines.append(f"warning: {p.task}: the store shows the baseline did not learn this task: {p.gate}; "
                         "its calls will be greyed out")
    return lines
