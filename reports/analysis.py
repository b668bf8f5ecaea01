"""Paired comparisons of every variant with the baseline, per task condition, and their calls.

A *condition* is a task at one size, one hyper-parameter setting and one budget; a variant is
only ever compared with the baseline under the same condition and on the same seeds (paired
design, the seeds being the shared source of randomness: init, data order, dropout). Cells
trained with another budget or task configuration form another condition and are never paired.

For a variant v and condition c with paired seeds s, the signed difference is
``d_s = sign * (v_s - b_s)`` with ``sign = +1`` when higher is better, else ``-1``, so d > 0
always means "v is better". Reported: mean d with its paired t interval (Student 1908), the
paired t test (primary), the TOST equivalence test against the task's smallest effect of
interest (Schuirmann 1987), an exact sign-flip p (Fisher 1935) as a robustness column, the
standardised effect ``mean(d) / sd(b)`` (in units of the baseline's seed-to-seed standard
deviation, as Narang et al. 2021 report the spread of their baseline runs), and the
probability of improvement. Tests are corrected across the benchmark (Benjamini & Hochberg
1995 by default). With adaptive seeds the p-values are sequential (see
:func:`modtransfer.reports.stats.sequential_p`). The decision rules are in
:mod:`modtransfer.reports.verdicts`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from modtransfer.core.task import OBSERVERS

from . import stats
from .records import (
    BASELINE,
    NOISY_THROUGHPUT_CV,
    Comparison,
    Condition,
    Gate,
    Settings,
    timings,
    usable,
)
from .verdicts import call


def axis_keys(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Per task, every field that a hyper-parameter axis or row varies in ``rows``."""
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["task"], set()).update(r.get("hparams") or {})
    return out


def _config_json(row: dict[str, Any], axes: dict[str, set[str]]) -> str:
    """Budget and task configuration of a row, minus the fields that hyper-parameter settings vary."""
    budget = dict(row.get("budget") or {})
    for k in OBSERVERS:  # how often a cell is evaluated or diagnosed does not change what it learns
        budget.pop(k, None)
    for k in axes.get(row["task"], ()):
        budget.pop(k, None)
    out = {"budget": budget, "task_config": row.get("task_config") or {}}
    impl = (row.get("spec") or {}).get("implementation", "modtransfer")
    if impl != "modtransfer":
        out["implementation"] = impl
    return json.dumps(out, sort_keys=True)


def cond_key(row: dict[str, Any], axes: dict[str, set[str]]) -> tuple[str, str, str, str]:
    return (row["task"], row["size"], json.dumps(row.get("hparams") or {}, sort_keys=True),
            _config_json(row, axes))


def _config_diff(configs: list[str]) -> dict[str, str]:
    """A short name per configuration JSON: the budget / task fields on which they differ."""
    if len(configs) < 2:
        return {c: "" for c in configs}
    flat = [{**{f"budget.{k}": v for k, v in json.loads(c)["budget"].items()},
             **{f"task.{k}": v for k, v in json.loads(c)["task_config"].items()},
             "impl.implementation": json.loads(c).get("implementation", "modtransfer")} for c in configs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return {c: ", ".join(f"{k.split('.', 1)[1]}={f.get(k)}" for k in differ) for c, f in zip(configs, flat, strict=True)}


def conditions(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], Condition]:
    """The task conditions present in ``rows``, keyed by (task, size, hparams JSON, config JSON)."""
    sizes = {r["size"] for r in rows}
    axes = axis_keys(rows)
    configs_per_task: dict[str, list[str]] = {}
    for r in rows:
        cfg = _config_json(r, axes)
        lst = configs_per_task.setdefault(r["task"], [])
        if cfg not in lst:
            lst.append(cfg)
    names = {t: _config_diff(cfgs) for t, cfgs in configs_per_task.items()}
    out: dict[tuple[str, str, str, str], Condition] = {}
    for r in rows:
        key = cond_key(r, axes)
        if key in out:
            continue
        cfg_name = names[r["task"]][key[3]]
        group = r["task"] + (f"@{r['size']}" if len(sizes) > 1 else "") + (f" {{{cfg_name}}}" if cfg_name else "")
        label = group
        if r.get("hparams"):
            label += " [" + ", ".join(f"{k}={v}" for k, v in sorted(r["hparams"].items())) + "]"
        out[key] = Condition(r["task"], r["size"], key[2], r["primary_metric"], bool(r["higher_is_better"]), label,
                             group, key[3])
    return dict(sorted(out.items()))


def _by_seed(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The latest row per seed (rows come ordered by finish time)."""
    return {r["seed"]: r for r in rows}


def _ratio(num: list[float], den: list[float]) -> float:
    num = [x for x in num if x is not None and x > 0]
    den = [x for x in den if x is not None and x > 0]
    return float(np.mean(num) / np.mean(den)) if num and den else math.nan


def learn_gate(cond: Condition, baseline: list[float], settings: Settings) -> Gate:
    """Whether the baseline is clearly better than the task's trivial score under ``cond``.

    Clearly better: by more than the task's margin, and with two or more seeds the one-sided
    ``1 - alpha`` t lower bound of the improvement over the trivial score is above the margin.
    """
    info = settings.tasks.get(cond.task) or {}
    trivial = info.get("trivial")
    if not isinstance(trivial, int | float) or not math.isfinite(trivial):
        return Gate("unchecked", "the task declares no trivial score")
    if not baseline:
        return Gate("unchecked", "no usable baseline cell", float(trivial))
    margin, _ = settings.margin(cond.task)
    margin = margin if math.isfinite(margin) else 0.0
    sign = 1.0 if cond.higher_is_better else -1.0
    gain = [sign * (b - trivial) for b in baseline]
    what = info.get("trivial_name") or "trivial system"
    mean = float(np.mean(gain))
    if len(gain) >= 2:
        sd = float(np.std(gain, ddof=1))
        from scipy import stats as sps

        lower = mean - float(sps.t.ppf(1 - settings.alpha, len(gain) - 1)) * sd / math.sqrt(len(gain))
    else:
        lower = mean - margin  # one seed: ask for twice the margin
    ok = lower > margin
    text = (f"baseline {float(np.mean(baseline)):.4g} vs {what} {trivial:.4g} "
            f"(gain {mean:+.3g}, margin {margin:.3g})")
    return Gate("learned" if ok else "not learned", text, float(trivial))


def _noise(base_values: list[float], declared: Any) -> tuple[float, str]:
    """The baseline's seed SD here: measured with two or more seeds, else the task's declared figure."""
    if len(base_values) >= 2:
        return stats.sample_std(base_values), f"measured, {len(base_values)} seeds"
    if isinstance(declared, int | float) and declared > 0:
        return float(declared), "declared by the task"
    return math.nan, "none"


def _pair(c: Comparison, cells: dict[int, dict[str, Any]], base_ok: dict[int, dict[str, Any]]) -> list[float]:
    """Fill the paired differences and failure counts of ``c``; returns the per-seed throughput ratios."""
    sign = 1.0 if c.cond.higher_is_better else -1.0
    tps: list[float] = []
    for s in sorted(cells):
        r = cells[s]
        c.n_variant_cells += 1
        if usable(r):
            c.variant_values.append(float(r["primary_value"]))
            if s in base_ok:
                b = float(base_ok[s]["primary_value"])
                c.seeds.append(s)
                c.paired_baseline.append(b)
                c.diffs.append(sign * (float(r["primary_value"]) - b))
                bt, vt = base_ok[s].get("tokens_per_s"), r.get("tokens_per_s")
                if bt and vt and bt > 0 and vt > 0:
                    tps.append(vt / bt)
        elif r["status"] == "timeout":
            c.n_timeout += 1
        else:
            c.n_failed += 1
            c.n_diverged += r["status"] == "diverged"
    return tps


def _test(c: Comparison, settings: Settings) -> None:
    """The (sequential) paired t and TOST p-values, the interval and the sign-flip p of ``c``."""
    if not c.diffs:
        return
    d = np.asarray(c.diffs)
    p_diff, p_eq, used = stats.sequential_p(d, settings.looks, c.margin if math.isfinite(c.margin) else None)
    c.n_used = used
    if used >= 2:
        c.p_value, c.p_equiv = float(p_diff), float(p_eq)
        c.ci = stats.t_interval(d[:used], settings.level)
    c.p_signflip = stats.sign_flip_pvalue(d[: used or len(d)], settings.rng(c.variant, c.cond.label))


def _one(v: str, cond: Condition, cells: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]],
         settings: Settings) -> Comparison:
    """Variant ``v`` against the baseline under ``cond``."""
    base_ok = {s: r for s, r in base.items() if usable(r)}
    base_values = [float(base_ok[s]["primary_value"]) for s in sorted(base_ok)]
    margin, margin_src = settings.margin(cond.task)
    noise, noise_src = _noise(base_values, (settings.tasks.get(cond.task) or {}).get("noise_sd"))
    c = Comparison(v, cond, gate=learn_gate(cond, base_values, settings), margin=margin, margin_source=margin_src,
                   noise_sd=noise, noise_source=noise_src)
    tps = _pair(c, cells, base_ok)
    c.baseline_values = base_values
    c.n_baseline_bad = len(base) - len(base_ok)
    c.n_baseline_cells = len(base)
    vrows = [r for r in cells.values() if r["status"] == "done"]
    for col in ("params", "flops_per_token", "tokens_per_s"):
        c.cost[col] = _ratio([r.get(col) for r in vrows], [r.get(col) for r in base_ok.values()])
    # one timing per arm (stacked seeds share one) cannot show its own noise: marked as such, not as steady
    c.cost_noisy["tokens_per_s"] = (min(timings(vrows), timings(list(base_ok.values()))) < 2 or
                                    (len(tps) >= 2 and float(np.std(tps, ddof=1) / np.mean(tps)) > NOISY_THROUGHPUT_CV))
    _test(c, settings)
    return c


def _adjust(comps: list[Comparison], settings: Settings) -> None:
    """Correct the tested comparisons' p-values across the benchmark (equivalence tests separately)."""
    family = [c for c in comps if tested(c, settings)]
    if not family:
        return
    for c, q in zip(family, stats.adjust([c.p_value for c in family], settings.correction), strict=True):
        c.p_adjusted = float(q)
    eq = [c for c in family if math.isfinite(c.p_equiv)]
    if eq:
        for c, q in zip(eq, stats.adjust([c.p_equiv for c in eq], settings.correction), strict=True):
            c.p_equiv_adjusted = float(q)


def compare(rows: list[dict[str, Any]], settings: Settings = Settings()) -> list[Comparison]:
    """Every (variant, condition) comparison with the baseline, with p-values adjusted and calls made."""
    conds = conditions(rows)
    axes = axis_keys(rows)
    grouped: dict[tuple[tuple[str, str, str, str], str], list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault((cond_key(r, axes), r["variant"]), []).append(r)
    comps: list[Comparison] = []
    for ckey, cond in conds.items():
        base = _by_seed(grouped.get((ckey, BASELINE), []))
        for v in sorted({v for (k, v) in grouped if k == ckey and v != BASELINE}):
            comps.append(_one(v, cond, _by_seed(grouped[(ckey, v)]), base, settings))
    _adjust(comps, settings)
    for c in comps:
        c.call = call(c, settings)
    return comps


def tested(c: Comparison, settings: Settings) -> bool:
    """Whether a comparison enters the corrected family of tests."""
    return (c.n_used >= settings.min_seeds and not c.n_failed and c.gate.status != "not learned"
            and math.isfinite(c.p_value))


def implementation_of(cond: Condition) -> str:
    """The implementation profile a condition's cells were built on."""
    return json.loads(cond.config_json).get("implementation", "modtransfer")


def across_implementations(comps: list[Comparison]) -> list[dict[str, Any]]:
    """Per variant and task setting run on two or more implementations: its effect and call on each.

    ``sign``: "kept" when every implementation with a better/worse call agrees and none has the
    opposite call; "flips" when one is better and another worse; "untested" otherwise. ``points``:
    whether the point estimates all point the same way.
    """
    groups: dict[tuple[str, str, str, str, str], dict[str, Comparison]] = {}
    for c in comps:
        cfg = json.loads(c.cond.config_json)
        impl = cfg.pop("implementation", "modtransfer")
        key = (c.variant, c.cond.task, c.cond.size, c.cond.hparams_json, json.dumps(cfg, sort_keys=True))
        groups.setdefault(key, {})[impl] = c
    out = []
    for (variant, task, size, hp, _), per in sorted(groups.items()):
        if len(per) < 2:
            continue
        calls = {i: c.call for i, c in per.items()}
        better = [i for i, k in calls.items() if k == "better"]
        worse = [i for i, k in calls.items() if k == "worse"]
        sign = "flips" if better and worse else ("kept" if (better or worse) and len(better) + len(worse) == len(per)
                                                 else "untested")
        signs = {math.copysign(1, c.mean_diff) for c in per.values() if c.n and math.isfinite(c.mean_diff)
                 and c.mean_diff != 0}
        label = task + (f"@{size}" if len({c.cond.size for c in comps}) > 1 else "") + (
            " [" + ", ".join(f"{k}={v}" for k, v in sorted(json.loads(hp).items())) + "]" if json.loads(hp) else "")
        out.append({"variant": variant, "task": label, "sign": sign, "points": len(signs) <= 1,
                    "per": {i: {"effect": c.std_effect, "diff": c.mean_diff, "call": c.call, "n": c.n}
                            for i, c in sorted(per.items())}})
    return out


def overall_effects(comps: list[Comparison]) -> dict[str, float]:
    """Mean standardised effect (baseline seed SDs) of each variant over the conditions its baseline learned.

    One unit for every task, so MSE, nats and BLEU are never averaged together (NaN when none).
    """
    per: dict[str, list[float]] = {}
    for c in comps:
        per.setdefault(c.variant, [])
        e = c.std_effect
        if math.isfinite(e) and c.gate.status != "not learned":
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
    from modtransfer.core.errors import UserError
    from modtransfer.run.store import Store

    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}")
    store = Store(path, readonly=True)
    rows = store.rows()
    if not rows:
        raise UserError(f"the results store {path} has no finished cells yet")
    return rows, _portable_sources(store.meta())


def _portable_sources(meta: dict[str, Any]) -> dict[str, Any]:
    """The store's meta with each plan's ``source`` file as :func:`~modtransfer.run.envinfo.portable_path`
    (stores written before plans were recorded so hold this machine's absolute path)."""
    from modtransfer.run.envinfo import portable_path

    def fix(plan: Any) -> Any:
        if isinstance(plan, dict) and isinstance(plan.get("source"), str) and plan["source"]:
            src = portable_path(plan["source"])  # outside the working folder: its name only, no machine's path
            return {**plan, "source": Path(src).name if Path(src).is_absolute() else src}
        return plan

    out = dict(meta)
    if "plan" in out:
        out["plan"] = fix(out["plan"])
    if isinstance(out.get("plans"), list):
        out["plans"] = [fix(p) for p in out["plans"]]
    return out
