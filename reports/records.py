"""The records of an analysis: its settings, a task condition, the learned-baseline gate and one comparison.

Plain data with derived properties; the computations that fill them are in :mod:`.analysis`, the
decision rules in :mod:`.verdicts` (both import this module, never each other's internals).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats

BASELINE = "baseline"
UNSTABLE_STATUSES = ("diverged", "failed")
#: Relative spread (coefficient of variation across paired seeds) above which a throughput ratio is marked noisy.
NOISY_THROUGHPUT_CV = 0.10


@dataclass(frozen=True)
class Settings:
    """Knobs of the analysis; all of them are printed in the report."""

    alpha: float = 0.05            # error rate of the corrected tests (FDR for "bh", FWER for "holm")
    correction: str = "bh"         # Benjamini & Hochberg 1995; "holm" for Holm 1979
    level: float = 0.95            # interval level
    min_seeds: int = 3             # fewest paired seeds for a better / worse / no change call
    margins: dict[str, float] = field(default_factory=dict)     # task -> smallest effect of interest (plan's)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> declared gate info (margin, noise, trivial)
    looks: tuple[int, ...] | None = None   # adaptive seeds: paired seeds at each look; None = one fixed look
    n_boot: int = 10_000           # resamples of the rank-agreement bootstrap
    seed: int = 0                  # base seed of every bootstrap draw

    def rng(self, *key: str) -> np.random.Generator:
        """A generator seeded from ``seed`` and ``key``: the same draws whatever the order of work."""
        return np.random.default_rng([self.seed, zlib.crc32("|".join(key).encode())])

    def margin(self, task: str) -> tuple[float, str]:
        """(smallest effect of interest, where it comes from) for ``task``; NaN when nobody declared one."""
        if task in self.margins:
            return float(self.margins[task]), "plan"
        info = self.tasks.get(task) or {}
        m = info.get("margin")
        if isinstance(m, int | float) and m > 0:
            return float(m), "task"
        return math.nan, "none"

    @classmethod
    def from_meta(cls, meta: dict[str, Any], **overrides: Any) -> Settings:
        """Settings for a store: task declarations, the plan's margins and its look schedule."""
        plan = meta.get("plan") if isinstance(meta.get("plan"), dict) else {}
        tasks = meta.get("tasks") if isinstance(meta.get("tasks"), dict) else {}
        margins = plan.get("margins") if isinstance(plan.get("margins"), dict) else {}
        looks = plan.get("looks")
        kw: dict[str, Any] = {"tasks": tasks, "margins": margins,
                              "looks": tuple(looks) if isinstance(looks, list) and len(looks) > 1 else None}
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class Condition:
    task: str
    size: str
    hparams_json: str
    metric: str
    higher_is_better: bool
    label: str          # task [@size] [hyper-parameters] [budget]: one condition
    group: str = ""     # task [@size] [budget]: the conditions of one task that differ only in hyper-parameters
    config_json: str = "{}"   # budget and task configuration shared by every cell of the condition

    @property
    def hparams(self) -> dict[str, Any]:
        return json.loads(self.hparams_json)


@dataclass
class Gate:
    """Did the baseline learn this condition? (its score against the task's trivial score)."""

    status: str                 # "learned", "not learned" or "unchecked"
    text: str
    trivial: float = math.nan


@dataclass
class Comparison:
    """One variant against the baseline under one condition."""

    variant: str
    cond: Condition
    seeds: list[int] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)          # signed, > 0 = better
    paired_baseline: list[float] = field(default_factory=list)
    baseline_values: list[float] = field(default_factory=list)
    variant_values: list[float] = field(default_factory=list)
    ci: tuple[float, float] | None = None      # t interval of mean(d) over the seeds used
    n_used: int = 0                 # paired seeds the test used (the last complete look)
    p_value: float = math.nan       # paired t (sequential over the looks with adaptive seeds)
    p_adjusted: float | None = None
    p_equiv: float = math.nan       # TOST against +-margin
    p_equiv_adjusted: float | None = None
    p_signflip: float = math.nan    # exact sign-flip test, robustness column
    margin: float = math.nan
    margin_source: str = "none"
    noise_sd: float = math.nan      # the baseline's seed SD here (measured, else declared)
    noise_source: str = "none"
    gate: Gate = field(default_factory=lambda: Gate("unchecked", "no trivial score declared"))
    n_failed: int = 0              # variant cells diverged or failed
    n_diverged: int = 0
    n_variant_cells: int = 0
    n_timeout: int = 0
    n_baseline_bad: int = 0        # baseline cells without a usable value
    n_baseline_cells: int = 0
    cost: dict[str, float] = field(default_factory=dict)
    cost_noisy: dict[str, bool] = field(default_factory=dict)
    call: str = "missing"

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean_diff(self) -> float:
        return float(np.mean(self.diffs[: self.n_used or self.n])) if self.diffs else math.nan

    @property
    def raw_diff(self) -> float:
        """Mean of variant - baseline in the metric's own direction."""
        return self.mean_diff if self.cond.higher_is_better else -self.mean_diff

    @property
    def baseline_mean(self) -> float:
        return float(np.mean(self.baseline_values)) if self.baseline_values else math.nan

    @property
    def variant_mean(self) -> float:
        return float(np.mean(self.variant_values)) if self.variant_values else math.nan

    @property
    def baseline_std(self) -> float:
        return stats.sample_std(self.baseline_values)

    @property
    def rel_change(self) -> float:
        """Signed relative change in percent of the paired baseline mean (> 0 = better); descriptive only."""
        if not self.diffs:
            return math.nan
        base = abs(float(np.mean(self.paired_baseline)))
        return 100.0 * self.mean_diff / base if base > 0 else math.nan

    @property
    def std_effect(self) -> float:
        """Mean paired difference over the baseline's seed SD (measured here, else the task's declared noise)."""
        sd = self.noise_sd
        return self.mean_diff / sd if self.diffs and sd > 0 else math.nan

    @property
    def p_improve(self) -> float:
        return float(np.mean(np.asarray(self.diffs) > 0)) if self.diffs else math.nan

    @property
    def diverged_rate(self) -> float:
        """Share of the variant's cells here that diverged (a failure rate, never averaged into a mean)."""
        return self.n_diverged / self.n_variant_cells if self.n_variant_cells else math.nan


def timings(rows: list[dict[str, Any]]) -> int:
    """How many separate measurements of speed ``rows`` hold: the seeds of a stacked group trained as one
    model share one timing (their ``env.stack.group_wall_s`` and ``train_s``), so they count once."""
    keys = set()
    for r in rows:
        stack = (r.get("env") or {}).get("stack") or {}
        keys.add((stack.get("group_wall_s"), r.get("train_s")) if stack.get("members", 1) > 1 else r.get("cell_id"))
    return len(keys)


def usable(row: dict[str, Any]) -> bool:
    """A row whose final evaluation can be compared."""
    v = row.get("primary_value")
    return row["status"] == "done" and v is not None and math.isfinite(v)
