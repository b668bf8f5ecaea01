"""Paired comparisons of every variant with the baseline, per task condition, and their calls.

A *condition* is a task at one size and one hyper-parameter setting; a variant is only ever
compared with the baseline under the same condition and on the same seeds (paired design,
the seeds being the shared source of randomness: init, data order, dropout).

For a variant v and condition c with paired seeds s, the signed difference is
``d_s = sign * (v_s - b_s)`` with ``sign = +1`` when higher is better, else ``-1``, so d > 0
always means "v is better". Reported: mean d, its percentile-bootstrap interval (Efron 1979),
the relative change ``100 * mean(d) / |mean(b)|``, the standardised effect ``mean(d) / sd(b)``
(in units of the baseline's seed-to-seed standard deviation, as Narang et al. 2021 report
the spread of their 5 baseline runs), the probability of improvement (share of paired seeds
with d > 0), and an exact sign-flip p-value (Fisher 1935), adjusted across all tests.
The decision rules are in :mod:`modtransfer.reports.verdicts`.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import stats

BASELINE = "baseline"
UNSTABLE_STATUSES = ("diverged", "failed")


@dataclass(frozen=True)
class Settings:
    """Knobs of the analysis; all of them are printed in the report."""

    alpha: float = 0.05            # error rate of the corrected tests (FDR for "bh", FWER for "holm")
    correction: str = "bh"         # Benjamini & Hochberg 1995; "holm" for Holm 1979
    rel_threshold: float = 1.0     # percent: equivalence margin, and the few-seeds fallback threshold
    level: float = 0.95            # bootstrap interval level
    n_boot: int = 10_000
    seed: int = 0                  # base seed of every bootstrap draw

    @property
    def min_test_pairs(self) -> int:
        """Fewest paired seeds with which the exact sign-flip test can reach p <= alpha."""
        n = 1
        while stats.min_sign_flip_p(n) > self.alpha:
            n += 1
        return n

    def rng(self, *key: str) -> np.random.Generator:
        """A generator seeded from ``seed`` and ``key``: the same draws whatever the order of work."""
        return np.random.default_rng([self.seed, zlib.crc32("|".join(key).encode())])


@dataclass(frozen=True)
class Condition:
    task: str
    size: str
    hparams_json: str
    metric: str
    higher_is_better: bool
    label: str          # task [@size] [hyper-parameters]: one condition
    group: str = ""     # task [@size]: the conditions of one task that differ only in hyper-parameters

    @property
    def hparams(self) -> dict[str, Any]:
        return json.loads(self.hparams_json)


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
    ci: tuple[float, float] | None = None
    p_value: float = math.nan
    p_adjusted: float | None = None
    n_failed: int = 0              # variant cells diverged or failed
    n_timeout: int = 0
    n_baseline_bad: int = 0        # baseline cells without a usable value
    cost: dict[str, float] = field(default_factory=dict)
    call: str = "missing"
    descriptive: bool = False

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean_diff(self) -> float:
        return float(np.mean(self.diffs)) if self.diffs else math.nan

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
        """Signed relative change in percent of the paired baseline mean (> 0 = better)."""
        if not self.diffs:
            return math.nan
        base = abs(float(np.mean(self.paired_baseline)))
        return 100.0 * self.mean_diff / base if base > 0 else math.nan

    @property
    def std_effect(self) -> float:
        sd = self.baseline_std
        return self.mean_diff / sd if self.diffs and sd > 0 else math.nan

    @property
    def p_improve(self) -> float:
        return float(np.mean(np.asarray(self.diffs) > 0)) if self.diffs else math.nan


def usable(row: dict[str, Any]) -> bool:
    """A row whose final evaluation can be compared."""
    v = row.get("primary_value")
    return row["status"] == "done" and v is not None and math.isfinite(v)


def conditions(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], Condition]:
    """The task conditions present in ``rows``, keyed by (task, size, hparams JSON)."""
    sizes = {r["size"] for r in rows}
    out: dict[tuple[str, str, str], Condition] = {}
    for r in rows:
        hp = json.dumps(r.get("hparams") or {}, sort_keys=True)
        key = (r["task"], r["size"], hp)
        if key in out:
            continue
        group = r["task"] + (f"@{r['size']}" if len(sizes) > 1 else "")
        label = group
        if r.get("hparams"):
            label += " [" + ", ".join(f"{k}={v}" for k, v in sorted(r["hparams"].items())) + "]"
        out[key] = Condition(r["task"], r["size"], hp, r["primary_metric"], bool(r["higher_is_better"]), label,
                             group)
    return dict(sorted(out.items()))


def _cond_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["task"], row["size"], json.dumps(row.get("hparams") or {}, sort_keys=True)


def _by_seed(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The latest row per seed (rows come ordered by finish time)."""
    return {r["seed"]: r for r in rows}


def _ratio(num: list[float], den: list[float]) -> float:
    num = [x for x in num if x is not None and x > 0]
    den = [x for x in den if x is not None and x > 0]
    return float(np.mean(num) / np.mean(den)) if num and den else math.nan


def compare(rows: list[dict[str, Any]], settings: Settings = Settings()) -> list[Comparison]:
    """Every (variant, condition) comparison with the baseline, with p-values adjusted and calls made."""
    from .verdicts import call

    conds = conditions(rows)
    grouped: dict[tuple[tuple[str, str, str], str], list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault((_cond_key(r), r["variant"]), []).append(r)
    comps: list[Comparison] = []
    for ckey, cond in conds.items():
        base = _by_seed(grouped.get((ckey, BASELINE), []))
        base_ok = {s: r for s, r in base.items() if usable(r)}
        variants = sorted({v for (k, v) in grouped if k == ckey and v != BASELINE})
        for v in variants:
            cells = _by_seed(grouped[(ckey, v)])
            c = Comparison(v, cond)
            sign = 1.0 if cond.higher_is_better else -1.0
            for s in sorted(cells):
                r = cells[s]
                if usable(r):
                    c.variant_values.append(float(r["primary_value"]))
                    if s in base_ok:
                        b = float(base_ok[s]["primary_value"])
                        c.seeds.append(s)
                        c.paired_baseline.append(b)
                        c.diffs.append(sign * (float(r["primary_value"]) - b))
                elif r["status"] == "timeout":
                    c.n_timeout += 1
                else:
                    c.n_failed += 1
            c.baseline_values = [float(r["primary_value"]) for r in base_ok.values()]
            c.n_baseline_bad = len(base) - len(base_ok)
            vrows = [r for r in cells.values() if r["status"] == "done"]
            brows = list(base_ok.values())
            for col in ("params", "flops_per_token", "tokens_per_s"):
                c.cost[col] = _ratio([r.get(col) for r in vrows], [r.get(col) for r in brows])
            rng = settings.rng(v, cond.label)
            c.ci = stats.bootstrap_ci(c.diffs, rng, level=settings.level, n_boot=settings.n_boot)
            if c.diffs:
                c.p_value = stats.sign_flip_pvalue(c.diffs, rng)
            comps.append(c)
    family = [c for c in comps if c.n >= settings.min_test_pairs]
    if family:
        adjusted = stats.adjust([c.p_value for c in family], settings.correction)
        for c, q in zip(family, adjusted, strict=True):
            c.p_adjusted = float(q)
    for c in comps:
        c.call, c.descriptive = call(c, settings)
    return comps


def effect_kind(comps: list[Comparison]) -> str:
    """"std" when every comparison with data has a standardised effect, else "rel" (percent)."""
    with_data = [c for c in comps if c.n]
    if with_data and all(math.isfinite(c.std_effect) for c in with_data):
        return "std"
    return "rel"


def effect(c: Comparison, kind: str) -> float:
    return c.std_effect if kind == "std" else c.rel_change


def overall_effects(comps: list[Comparison], kind: str) -> dict[str, float]:
    """Mean effect of each variant over its conditions (NaN when it has none)."""
    per: dict[str, list[float]] = {}
    for c in comps:
        per.setdefault(c.variant, [])
        e = effect(c, kind)
        if math.isfinite(e):
            per[c.variant].append(e)
    return {v: float(np.mean(e)) if e else math.nan for v, e in per.items()}


def order_variants(overall: dict[str, float]) -> list[str]:
    """Variants from the largest overall effect (best) to the smallest; those without data last."""
    return sorted(overall, key=lambda v: (not math.isfinite(overall[v]), -overall[v] if math.isfinite(overall[v]) else 0, v))


def variant_costs(comps: list[Comparison]) -> dict[str, dict[str, float]]:
    """Geometric mean over conditions of each cost ratio (variant / baseline)."""
    out: dict[str, dict[str, float]] = {}
    for v in sorted({c.variant for c in comps}):
        out[v] = {}
        for col in ("params", "flops_per_token", "tokens_per_s"):
            vals = [c.cost.get(col, math.nan) for c in comps if c.variant == v]
            vals = [x for x in vals if math.isfinite(x) and x > 0]
            out[v][col] = float(np.exp(np.mean(np.log(vals)))) if vals else math.nan
    return out


def sensitivity(comps: list[Comparison]) -> list[dict[str, Any]]:
    """Per variant and task: over its hyper-parameter settings, how often it beats the baseline."""
    groups: dict[tuple[str, str, str], list[Comparison]] = {}
    for c in comps:
        if c.cond.hparams:
            groups.setdefault((c.variant, c.cond.task, c.cond.size), []).append(c)
    out = []
    for (v, task, size), cs in sorted(groups.items()):
        with_data = [c for c in cs if c.n]
        wins = sum(c.mean_diff > 0 for c in with_data)
        out.append({"variant": v, "task": task, "size": size, "settings": len(cs), "with_data": len(with_data),
                    "beats_baseline": wins, "share": wins / len(with_data) if with_data else math.nan,
                    "better_calls": sum(c.call == "better" for c in cs), "worse_calls": sum(c.call == "worse" for c in cs)})
    return out


def load_store(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and meta of ``run_dir/results.sqlite``; a missing or empty store is a user error."""
    from modtransfer.errors import UserError
    from modtransfer.store import Store

    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}")
    store = Store(path)
    rows = store.rows()
    if not rows:
        raise UserError(f"the results store {path} has no finished cells yet")
    return rows, store.meta()
