"""Power before training: the smallest effect a plan can call, per task, from the baseline's seed noise.

For a task with baseline seed SD sigma, a variant's paired differences have SD at most
sqrt(2) * sigma (two independent seed draws; pairing by seed can only lower it). With n paired
seeds and m tests in the benchmark, the smallest true difference the two-sided paired t test
finds with 80% power at level alpha / m is the plan's detectable effect: that is the level
Benjamini-Hochberg applies when one real effect stands among m tests (Cohen 1988 for the
power of the t test; Benjamini & Hochberg 1995 for the step-up thresholds). A plan whose
detectable effect exceeds the task's margin gets a warning with the seeds it would need.

After training, :func:`task_designs` gives the same figures per task for the report's first screen,
from the noise the store measured: the SD of the paired differences when there are any (pooled over
the variants), else the baseline's seed SD times sqrt(2), else the task's declared seed SD times
sqrt(2). They are at the level the headline tests each task (alpha, two-sided paired t; see
:mod:`.headline`), for a fixed number of seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import stats
from .analysis import learn_gate
from .records import BASELINE, Comparison, Condition, Settings, usable

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


@dataclass
class TaskDesign:
    """What one task of a finished run could call: its noise, the smallest callable effect, the seeds needed."""

    group: str
    task: str
    metric: str
    higher_is_better: bool
    n: int                     # paired seeds it has (the most of any comparison)
    sd_diff: float             # SD of the paired differences
    sd_source: str             # "paired" | "baseline" | "declared" | "unknown"
    sd_text: str               # where the SD comes from, in words
    margin: float
    margin_source: str
    detectable: float          # smallest true difference called with 80% power at n seeds
    seeds_needed: int | None   # seeds for a one-margin difference at 80% power (None: over 200, or unknown)
    learned: bool = True


def _paired_sd(comps: list[Comparison]) -> tuple[float, int]:
    """SD of the paired differences pooled over ``comps`` (degrees of freedom as weights), and how many entered."""
    ss, df, k = 0.0, 0, 0
    for c in comps:
        d = c.diffs[: c.n_used or c.n]
        if len(d) >= 2 and not c.n_failed:
            ss += stats.sample_std(d) ** 2 * (len(d) - 1)
            df += len(d) - 1
            k += 1
    return (math.sqrt(ss / df) if df else math.nan), k


def _design_noise(comps: list[Comparison], declared: Any) -> tuple[float, str, str]:
    sd, k = _paired_sd(comps)
    if math.isfinite(sd) and sd > 0:
        return sd, "paired", f"measured: paired differences, pooled over {k} comparison(s)"
    base = max((c.baseline_values for c in comps), key=len, default=[])
    if len(base) >= 2 and stats.sample_std(base) > 0:
        return (math.sqrt(2.0) * stats.sample_std(base), "baseline",
                f"baseline seed SD × √2 ({len(base)} seeds; no paired differences yet)")
    if isinstance(declared, int | float) and declared > 0:
        return (math.sqrt(2.0) * float(declared), "declared",
                "task's declared seed SD × √2 (for its default budget, not measured here)")
    return math.nan, "unknown", "unknown: no seeds measured and none declared"


def task_designs(comps: list[Comparison], settings: Settings) -> list[TaskDesign]:
    """Per task (conditions that differ only in hyper-parameters pooled): see :class:`TaskDesign`."""
    groups: dict[str, list[Comparison]] = {}
    for c in comps:
        groups.setdefault(c.cond.group, []).append(c)
    out = []
    for group, cs in sorted(groups.items()):
        c0 = cs[0]
        n = max(c.n_used or c.n for c in cs)
        sd, src, text = _design_noise(cs, (settings.tasks.get(c0.cond.task) or {}).get("noise_sd"))
        margin, msrc = settings.margin(c0.cond.task)
        ok = math.isfinite(sd) and sd > 0
        det = stats.detectable_effect(sd, n, settings.alpha, POWER) if ok and n >= 2 else math.nan
        need = stats.seeds_needed(margin, sd, settings.alpha, POWER) if ok and math.isfinite(margin) else None
        out.append(TaskDesign(group, c0.cond.task, c0.cond.metric, c0.cond.higher_is_better, n, sd, src, text,
                              margin, msrc, det, need, all(c.gate.status != "not learned" for c in cs)))
    return out


def headline_design(designs: list[TaskDesign], alpha: float = 0.05) -> tuple[float, int | None]:
    """(power now, seeds for 80%) of "better everywhere" for a one-margin gain on every learned task.

    One variant alone (no correction across variants); NaN / None when a learned task lacks a noise
    figure or a margin.
    """
    use = [d for d in designs if d.learned]
    if not use or any(not (math.isfinite(d.sd_diff) and math.isfinite(d.margin)) for d in use):
        return math.nan, None
    effects, sds = [d.margin for d in use], [d.sd_diff for d in use]
    now = stats.iut_power(effects, sds, [d.n for d in use], alpha) if min(d.n for d in use) >= 2 else math.nan
    return now, stats.iut_seeds_needed(effects, sds, alpha, POWER)


def headline_power_table(ratios: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5), seeds: tuple[int, ...] = (3, 6, 12, 20, 40),
                         tasks: tuple[int, ...] = (1, 3), alpha: float = 0.05) -> str:
    """Markdown: power of "better everywhere" for a gain of ``ratio`` SDs of the paired differences on every task.

    One variant alone (no correction across variants), tasks independent (:func:`stats.iut_power`);
    the last column is the seeds per task for 80% power.
    """
    lines = ["| gain / SD of paired differences | tasks | " + " | ".join(f"n = {n}" for n in seeds)
             + f" | seeds for {int(POWER * 100)}% |", "|---|---|" + "---|" * (len(seeds) + 1)]
    for r in ratios:
        for t in tasks:
            cells = [f"{stats.iut_power([r] * t, [1.0] * t, n, alpha):.2f}" for n in seeds]
            need = stats.iut_seeds_needed([r] * t, [1.0] * t, alpha, POWER)
            lines.append(f"| {r:g} | {t} | " + " | ".join(cells) + f" | {need if need else '> 200'} |")
    return "\n".join(lines)
