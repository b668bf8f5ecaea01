"""Equal tuning per arm: the same budget of quasi-random trials from one search space for every arm.

Comparing every variant at the baseline's hyper-parameters ("drop-in", Narang et al. 2021's
protocol) favours whatever those settings suit. MLCommons AlgoPerf's external tuning ruleset
(Dahl et al. 2023, arXiv 2306.07179; Kasimbeg et al. 2025, arXiv 2502.15015) instead gives each
submission the same number of quasi-random trials from its search space, in several independent
studies, selects on validation and scores on held-out data. A plan asks for the same here:

```yaml
tuning:
  trials: 5                 # per study, the same points for every arm (baseline included)
  studies: 3                # independent draws of the points (an interval over studies)
  space:
    lr: {log_uniform: [3.0e-4, 3.0e-2]}
    warmup: {uniform: [0.0, 0.2]}
```

Each study draws its ``trials`` points from a scrambled Halton sequence (Owen-style scrambling,
seeded by the study number; :class:`scipy.stats.qmc.Halton`), mapped to each axis: ``log_uniform``
[low, high] uniformly in log space, ``uniform`` linearly; integer budget fields are rounded, every
value is kept to 4 significant digits (the cell ids stay readable and reproducible). Every arm gets
the same points, so two arms' trials differ only in the arm (common random numbers across arms).
The drop-in cells (no hyper-parameter change) stay in the plan beside the trials: the report sets
the two regimes side by side (:mod:`modtransfer.reports.regimes`). Every cell of a tuning plan is
also scored on the task's test split (``budget.test_batches``), which selection never reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.task import Budget

DISTRIBUTIONS = ("log_uniform", "uniform")
MAX_TRIALS = 64
MAX_STUDIES = 16
#: budget fields a search space may not touch (they set what is measured, not how it trains)
NOT_TUNABLE = ("eval_every", "eval_batches", "diag_every", "max_seconds", "test_batches", "steps", "diverge_factor")


@dataclass(frozen=True)
class Tuning:
    """A plan's ``tuning`` section, validated."""

    trials: int
    studies: int
    space: dict[str, tuple[str, float, float]]   # field -> (distribution, low, high)

    def points(self) -> list[tuple[int, int, dict[str, Any]]]:
        """(study, trial, budget fields) of every trial, studies in order, the same for every arm."""
        from scipy.stats import qmc

        axes = sorted(self.space)
        ints = {f.name for f in Budget.__dataclass_fields__.values() if f.type in ("int", int)}
        out = []
        for study in range(self.studies):
            unit = qmc.Halton(d=len(axes), scramble=True, seed=study).random(self.trials)
            for trial, u in enumerate(unit):
                point = {}
                for axis, x in zip(axes, u, strict=True):
                    dist, lo, hi = self.space[axis]
                    v = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))) if dist == "log_uniform" \
                        else lo + x * (hi - lo)
                    point[axis] = int(round(v)) if axis in ints else float(f"{v:.4g}")
                out.append((study, trial, point))
        return out

    def index(self) -> dict[str, tuple[int, int]]:
        """hyper-parameter JSON of a trial -> (study, trial)."""
        import json

        return {json.dumps(p, sort_keys=True): (s, t) for s, t, p in self.points()}

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "studies": self.studies,
                "space": {k: {d: [lo, hi]} for k, (d, lo, hi) in self.space.items()}}


def _count(raw: dict[str, Any], key: str, default: int, most: int) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
        raise UserError(f"plan.tuning.{key} must be a whole number from 1 to {most}, got {v!r}")
    return v


def _axis(name: str, spec: Any) -> tuple[str, float, float]:
    where = f"plan.tuning.space.{name}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{where} must be one distribution like {{log_uniform: [1.0e-4, 1.0e-2]}} or "
                        f"{{uniform: [0.0, 0.2]}}, got {spec!r}")
    (dist, bounds), = spec.items()
    if dist not in DISTRIBUTIONS:
        raise UserError(f"{where}: unknown distribution {dist!r}{did_you_mean(str(dist), DISTRIBUTIONS)}; "
                        f"use one of {', '.join(DISTRIBUTIONS)}")
    ok = (isinstance(bounds, list) and len(bounds) == 2
          and all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds))
    if not ok:
        hint = "; YAML reads 1e-3 as text: write 1.0e-3" if isinstance(bounds, list) and any(
            isinstance(b, str) for b in bounds) else ""
        raise UserError(f"{where}.{dist} must be two numbers [low, high], got {bounds!r}{hint}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi or (dist == "log_uniform" and lo <= 0):
        raise UserError(f"{where}.{dist}: need low < high" + (" and low > 0 on a log scale" if dist == "log_uniform"
                                                              else "") + f", got [{lo}, {hi}]")
    return dist, lo, hi


def parse_tuning(raw: Any) -> Tuning | None:
    """Validate a plan's ``tuning`` section (None when absent); one clear line for each mistake."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UserError(f"plan.tuning must be a mapping with trials, studies and space, got {raw!r}")
    unknown = sorted(set(raw) - {"trials", "studies", "space"})
    if unknown:
        raise UserError(f"plan.tuning: unknown key {unknown[0]!r}; keys: trials, studies, space")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise UserError("plan.tuning.space must map budget fields to distributions, e.g. "
                        "{lr: {log_uniform: [1.0e-4, 1.0e-2]}}")
    fields = set(Budget().to_dict()) - set(NOT_TUNABLE) - {"betas", "schedule"}
    for name in space:
        if name not in fields:
            raise UserError(f"plan.tuning.space: {name!r} is not a tunable budget field"
                            f"{did_you_mean(str(name), fields)}; tunable: {', '.join(sorted(fields))}")
    return Tuning(_count(raw, "trials", 5, MAX_TRIALS), _count(raw, "studies", 3, MAX_STUDIES),
                  {name: _axis(name, spec) for name, spec in space.items()})
