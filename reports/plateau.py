"""Training sensitivity: per setting, how often training never leaves the trivial plateau, and the spread.

Escaping the loss plateau of a toy regression (a model stuck predicting the mean) is partly
chance, so a setting is described by the distribution of its final metric over seeds and by
its failure rate: the share of seeds whose final metric stayed on the plateau (within the
task's declared ``plateau_fraction`` of the trivial score) or diverged, with a Wilson score
interval (Wilson 1927, JASA 22:209; recommended for small n by Brown, Cai & DasGupta 2001,
Statistical Science 16:101).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .records import BASELINE


@dataclass
class Setting:
    task: str
    variant: str
    hparams: dict[str, Any]
    metric: str
    threshold: float                  # a final value at or beyond this is "on the plateau"
    values: list[float] = field(default_factory=list)   # final metric of the seeds that finished
    errors: list[float] = field(default_factory=list)   # each value's standard error, where the task gives one
    stuck: int = 0
    diverged: int = 0
    failed: int = 0                   # failed / timed out: not counted either way

    @property
    def n(self) -> int:
        return len(self.values) + self.diverged

    @property
    def failures(self) -> int:
        return self.stuck + self.diverged

    @property
    def rate(self) -> float:
        return self.failures / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.failures, self.n)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.hparams.items())) or "(plan defaults)"


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion k / n (scipy's implementation)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def plateau_settings(rows: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> list[Setting]:
    """One :class:`Setting` per (task, variant, hyper-parameters) of a task that declares a plateau.

    Only when the task's rows span two or more hyper-parameter settings (a sensitivity study). The
    metric is the task's ``plateau_metric`` (a study's own metric, its trivial level ``plateau_trivial``
    and its standard error ``<metric>_se`` among the row's metrics) when it declares one, else the
    primary metric against ``trivial``.
    """
    out: dict[tuple[str, str, str], Setting] = {}
    for r in rows:
        info = tasks.get(r["task"]) or {}
        frac, trivial = info.get("plateau_fraction"), info.get("plateau_trivial", info.get("trivial"))
        if not isinstance(frac, int | float) or not isinstance(trivial, int | float):
            continue
        metric, hib = info.get("plateau_metric") or r["primary_metric"], bool(r["higher_is_better"])
        threshold = trivial * frac if not hib else trivial / frac
        key = (r["task"], r["variant"], json.dumps(r.get("hparams") or {}, sort_keys=True))
        s = out.setdefault(key, Setting(r["task"], r["variant"], r.get("hparams") or {}, metric, threshold))
        metrics = r.get("metrics") or {}
        v = metrics.get(metric) if metric != r["primary_metric"] else r.get("primary_value")
        if r["status"] == "done" and v is not None and math.isfinite(v):
            s.values.append(float(v))
            s.errors.append(float(metrics.get(f"{metric}_se") or math.nan))
            s.stuck += (v >= threshold) if not hib else (v <= threshold)
        elif r["status"] == "diverged":
            s.diverged += 1
        else:
            s.failed += 1
    per_task: dict[str, set[str]] = {}
    for (task, _, hp) in out:
        per_task.setdefault(task, set()).add(hp)
    keep = [s for (task, _, _), s in out.items() if len(per_task[task]) >= 2]
    return sorted(keep, key=lambda s: (s.task, s.variant != BASELINE, s.variant, s.label))


def grid(settings: list[Setting]) -> tuple[list[str], list[str], np.ndarray, list[list[str]]]:
    """Settings of one task and variant laid out as a matrix: the axis with the most values as rows.

    Returns (row labels, column labels, failure rates, texts "k/n").
    """
    keys = sorted({k for s in settings for k in s.hparams})
    distinct = {k: {json.dumps(s.hparams.get(k)) for s in settings} for k in keys}
    row_key = max(keys, key=lambda k: (len(distinct[k]), k == "init")) if keys else ""

    def row_of(s: Setting) -> str:
        return str(s.hparams.get(row_key, "—")) if row_key else "(plan defaults)"

    def col_of(s: Setting) -> str:
        rest = {k: v for k, v in s.hparams.items() if k != row_key}
        return ", ".join(f"{k}={v}" for k, v in sorted(rest.items())) or "—"

    rows = list(dict.fromkeys(row_of(s) for s in settings))
    cols = list(dict.fromkeys(col_of(s) for s in settings))
    values = np.full((len(rows), len(cols)), np.nan)
    texts = [["" for _ in cols] for _ in rows]
    for s in settings:
        i, j = rows.index(row_of(s)), cols.index(col_of(s))
        values[i, j] = s.rate
        texts[i][j] = f"{s.failures}/{s.n}"
    return rows, cols, values, texts
