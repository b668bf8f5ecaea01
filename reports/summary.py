"""All the analysis of one run, in one object: comparisons, verdicts, agreement, costs, reference."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agreement import Agreement, agreement
from .analysis import compare, conditions, load_store, order_variants, overall_effects, sensitivity, variant_costs
from .headline import Headline, headlines
from .records import Comparison, Settings
from .reference import RefRow, compare_reference
from .verdicts import combine, verdict

UNITS = {"val_bleu": "BLEU points", "val_mse": "MSE", "val_ppl": "perplexity", "val_bpc": "bits/char",
         "val_acc": "accuracy"}


def unit(metric: str, task: str, rows: list[dict[str, Any]] | None = None) -> str:
    """The unit of ``metric`` on ``task`` in words, from the task's card (built with the options of
    ``rows``' cells, else its defaults); a task without a card: a guess from the metric's name."""
    from .cards import unit as card_unit

    declared = card_unit(rows or [], task.split("@")[0], metric)
    if declared != metric:
        return declared
    if metric in UNITS:
        return UNITS[metric]
    if metric.endswith("loss"):
        return "nats/token" if task.split("_")[0] in ("lm", "mt") else "loss"
    return metric


@dataclass(kw_only=True)
class Analysis:
    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    settings: Settings
    comps: list[Comparison]
    labels: list[str]
    overall: dict[str, float]                   # variant -> mean standardised effect (baseline seed SDs)
    order: list[str]
    verdicts: dict[str, tuple[str, str]]        # variant -> (verdict, reason)
    groups: list[str]                           # tasks (conditions that differ only in hyper-parameters)
    task_calls: dict[str, dict[str, str]]       # variant -> group -> call
    costs: dict[str, dict[str, float]]
    agreement: Agreement
    reference: list[RefRow]
    sensitivity: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    headlines: dict[str, Headline] = field(default_factory=dict)   # variant -> does the gain transfer?
    trials: list[dict[str, Any]] = field(default_factory=list)     # tuning trials' rows (out of the main calls)

    @property
    def benchmark(self) -> str:
        names = Counter(r["benchmark"] for r in self.rows)
        return names.most_common(1)[0][0] if names else "modtransfer"

    @property
    def plan(self) -> dict[str, Any]:
        plan = self.meta.get("plan")
        return plan if isinstance(plan, dict) else {}

    effect_unit: str = "baseline seed SDs"

    def comp(self, variant: str, label: str) -> Comparison | None:
        for c in self.comps:
            if c.variant == variant and c.cond.label == label:
                return c
        return None

    def seeds(self) -> int:
        """Most paired seeds any comparison has."""
        return max((c.n for c in self.comps), default=0)

    def across_implementations(self) -> list[dict[str, Any]]:
        from .analysis import across_implementations

        return across_implementations(self.comps)

    def plateau(self) -> list[Any]:
        """The training-sensitivity settings (tasks that declare a plateau, two or more settings)."""
        from .plateau import plateau_settings

        return plateau_settings(self.rows, self.settings.tasks)

    def min_seeds(self) -> int:
        """Fewest paired seeds of any comparison with data."""
        return min((c.n for c in self.comps if c.n), default=0)

    def too_few_seeds(self) -> bool:
        """True when some comparison has data but fewer paired seeds than a call needs."""
        return any(0 < c.n < self.settings.min_seeds for c in self.comps)

    def gates(self) -> dict[str, Any]:
        """Condition label -> the baseline-learned gate of that condition."""
        return {c.cond.label: c.gate for c in self.comps}

    def noise_floor(self) -> list[dict[str, Any]]:
        """Per condition: margin, baseline seed noise and the gate, for the report and the dry run."""
        out, seen = [], set()
        for c in self.comps:
            if c.cond.label in seen:
                continue
            seen.add(c.cond.label)
            out.append({"condition": c.cond.label, "task": c.cond.task, "metric": c.cond.metric,
                        "margin": c.margin, "margin_source": c.margin_source, "noise_sd": c.noise_sd,
                        "noise_source": c.noise_source, "baseline_seeds": len(c.baseline_values),
                        "gate": c.gate.status, "gate_text": c.gate.text})
        return out


def with_meta(settings: Settings | None, meta: dict[str, Any]) -> Settings:
    """``settings`` (statistical knobs) completed with the store's task declarations, margins and looks.

    What a caller sets explicitly wins; what it leaves empty comes from the store's meta.
    """
    import dataclasses

    stored = Settings.from_meta(meta)
    if settings is None:
        return stored
    return dataclasses.replace(settings, tasks=settings.tasks or stored.tasks,
                               margins=settings.margins or stored.margins,
                               looks=settings.looks if settings.looks is not None else stored.looks)


def analyse(rows: list[dict[str, Any]], meta: dict[str, Any], settings: Settings | None = None) -> Analysis:
    """Run every analysis on the rows (and meta) of a results store."""
    settings = with_meta(settings, meta)
    rows, trials = tuning_trials(rows, meta)
    comps = compare(rows, settings)
    conds = conditions(rows).values()
    labels = [c.label for c in conds]
    overall = overall_effects(comps)
    groups = sorted({c.group for c in conds})
    task_calls: dict[str, dict[str, str]] = {}
    verdicts = {}
    heads = headlines(comps, settings)
    for v in overall:
        task_calls[v] = {}
        for g in groups:
            calls = [c.call for c in comps if c.variant == v and c.cond.group == g]
            if calls:
                task_calls[v][g] = combine(calls)
        verdicts[v] = verdict(list(task_calls[v].values()), heads[v].kind if v in heads else None)
    skipped = meta.get("skipped") if isinstance(meta.get("skipped"), list) else []
    return Analysis(rows=rows, meta=meta, settings=settings, comps=comps, labels=labels, overall=overall,
                    order=order_variants(overall), verdicts=verdicts, groups=groups, task_calls=task_calls,
                    costs=variant_costs(comps), agreement=agreement(comps, settings),
                    reference=compare_reference(comps), sensitivity=sensitivity(comps), skipped=skipped,
                    headlines=heads, trials=trials)


def tuning_trials(rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the drop-in rows, the tuning trials' rows) of a plan with ``tuning``; the trials stay out of the main calls."""
    tuning = (meta.get("plan") or {}).get("tuning") if isinstance(meta.get("plan"), dict) else None
    if not isinstance(tuning, dict):
        return rows, []
    from modtransfer.run.tuning import parse_tuning

    from .regimes import split_rows

    return split_rows(rows, parse_tuning(tuning).index())


def analyse_run(run_dir: Path, settings: Settings | None = None) -> Analysis:
    rows, meta = load_store(run_dir)
    return analyse(rows, meta, settings)


def fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number for a table; an em dash when missing."""
    if x is None or not isinstance(x, int | float) or not math.isfinite(x):
        return "—"
    return f"{x:+.{digits}g}" if signed else f"{x:.{digits}g}"


TRANSFER_COLUMNS = ["variant", "name", "slot", "task", "task_name", "size", "hparams", "metric", "unit",
                    "higher_is_better", "n", "n_used",
                    "baseline_mean", "baseline_sd", "noise_sd", "noise_source", "margin", "margin_source",
                    "variant_mean", "diff", "interval_low", "interval_high", "interval", "unadjusted_low",
                    "unadjusted_high", "rel_change_pct", "std_effect", "win_rate",
                    "p_t", "p_t_adj", "p_equiv", "p_equiv_adj", "p_signflip", "baseline_learned", "trivial_score",
                    "call", "verdict", "params_ratio", "flops_per_token_ratio", "tokens_per_s_ratio",
                    "tokens_per_s_noisy", "n_failed", "n_diverged", "diverged_rate", "n_timeout"]


def _num(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def transfer_table(a: Analysis) -> tuple[list[str], list[list[Any]]]:
    """The tidy transfer matrix: one row per variant x condition; None for missing numbers.

    ``diff`` is the improvement (:data:`~modtransfer.core.task_card.SIGN_CONVENTION`: > 0 = better, in
    ``unit``); ``interval_*`` the interval the page draws (``interval``: FCR-adjusted for a call, else
    unadjusted, :mod:`.intervals`), ``unadjusted_*`` the plain t interval; ``win_rate`` the share of
    paired seeds where the variant did better (a description, not a probability).
    """
    from .intervals import shown_interval
    from .names import display_name, registered_slot

    out = []
    for v in a.order:
        for lab in a.labels:
            c = a.comp(v, lab)
            if c is None:
                continue
            lo, hi = c.ci or (None, None)
            slo, shi, kind = shown_interval(a, c)
            out.append([v, display_name(v), registered_slot(v) or "", lab, c.cond.task, c.cond.size,
                        c.cond.hparams_json, c.cond.metric, unit(c.cond.metric, c.cond.task, a.rows),
                        bool(c.cond.higher_is_better), c.n, c.n_used, _num(c.baseline_mean), _num(c.baseline_std),
                        _num(c.noise_sd), c.noise_source, _num(c.margin), c.margin_source,
                        _num(c.variant_mean), _num(c.mean_diff), _num(slo), _num(shi), kind, _num(lo), _num(hi),
                        _num(c.rel_change), _num(c.std_effect), _num(c.p_improve), _num(c.p_value), _num(c.p_adjusted),
                        _num(c.p_equiv), _num(c.p_equiv_adjusted), _num(c.p_signflip), c.gate.status,
                        _num(c.gate.trivial), c.call, a.verdicts[v][0], _num(c.cost.get("params")),
                        _num(c.cost.get("flops_per_token")), _num(c.cost.get("tokens_per_s")),
                        bool(c.cost_noisy.get("tokens_per_s", False)), c.n_failed, c.n_diverged, _num(c.diverged_rate),
                        c.n_timeout])
    return TRANSFER_COLUMNS, out
