"""Our effects next to the reference study's: Narang et al. 2021 (EMNLP, arXiv 2102.11972), Table 1.

The paper's figures live in ``data/narang2021_table1.csv`` (see ``data/README.md``). Our
language-modelling task is set beside the paper's pre-training loss (``early_loss``: C4
log-perplexity after 65k steps, lower is better) and our translation task beside its WMT'14
En-De BLEU (higher is better). Both sides are written as the report writes every effect: the
improvement over the baseline, positive = better, in each measure's own units (for the paper's
loss, Vanilla Transformer − model; for its BLEU, model − Vanilla Transformer). A different sign
at small scale is a finding to show, not an error to hide.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .records import Comparison

TABLE = Path(__file__).parent / "data" / "narang2021_table1.csv"
PAPER_RUNS = 5   # early_loss is a mean over 5 runs, with their standard deviation
BASELINE_MODEL = "Vanilla Transformer"


def _paper_names(path: Path = TABLE) -> dict[str, str]:
    """Our variant name -> the paper's model name, from the table's ``variant`` column (the one place
    this lives; a row may name several variants, space-separated, or none)."""
    with open(path, newline="", encoding="utf-8") as f:
        return {v: r["model"] for r in csv.DictReader(f) for v in (r.get("variant") or "").split()
                if v != "baseline"}


PAPER_NAMES: dict[str, str] = _paper_names()

# Our task name (or prefix before "_") -> (paper column, paper's higher_is_better, what it measures)
PAPER_TASKS: dict[str, tuple[str, bool, str]] = {
    "lm": ("early_loss", False, "C4 pre-training loss"),
    "mt": ("wmt_ende_bleu", True, "WMT'14 En-De BLEU"),
}


@dataclass
class RefRow:
    variant: str
    paper_model: str
    task: str                  # our condition label
    paper_measure: str
    paper_delta: float         # paper: improvement over its baseline (+ = better), in the paper's units
    paper_better: bool
    ours_metric: str
    ours_delta: float          # ours: mean paired improvement (+ = better), in our metric's units
    ours_ci: tuple[float, float] | None   # its unadjusted t interval (improvement)
    ours_call: str
    higher_is_better: bool
    paper_clear: bool | None = None   # |paper Δ| > 2 standard errors; None where the paper gives one run
    paper_baseline: float = math.nan  # the paper's Vanilla Transformer figure, in its own direction
    paper_value: float = math.nan     # the paper's figure for the model

    @property
    def paper_direction(self) -> str:
        """Which way the paper's measure is better, in words."""
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def signs_agree(self) -> bool | None:
        """Whether the point estimates point the same way (None when ours is missing)."""
        if not math.isfinite(self.ours_delta) or self.ours_delta == 0:
            return None
        return self.ours_better_point == self.paper_better

    @property
    def ours_better_point(self) -> bool:
        return self.ours_delta > 0

    @property
    def agreement(self) -> str:
        """'agree' / 'disagree' when our call is better or worse; 'ours unclear' otherwise."""
        if self.ours_call not in ("better", "worse"):
            return "ours unclear" if self.signs_agree is not None else "no data"
        return "agree" if (self.ours_call == "better") == self.paper_better else "disagree"


def paper_task_key(task: str) -> str | None:
    """The PAPER_TASKS key our task maps to ('lm', 'lm_wikitext' -> 'lm'), or None."""
    head = task.split("@")[0].split(" ")[0]  # a label may carry "@size [hparams]"
    for key in PAPER_TASKS:
        if head == key or head.startswith(key + "_"):
            return key
    return None


def load_table(path: Path = TABLE) -> dict[str, dict[str, str]]:
    """The paper's Table 1 keyed by model name."""
    with open(path, newline="", encoding="utf-8") as f:
        return {r["model"]: r for r in csv.DictReader(f)}


def compare_reference(comps: list[Comparison], table: dict[str, dict[str, str]] | None = None) -> list[RefRow]:
    """One row per (variant with a paper row, condition of a task the paper measured)."""
    table = table if table is not None else load_table()
    base = table[BASELINE_MODEL]
    out = []
    for c in comps:
        model = PAPER_NAMES.get(c.variant)
        key = paper_task_key(c.cond.task)
        if model is None or model not in table or key is None:
            continue
        col, hib, measure = PAPER_TASKS[key]
        if c.cond.higher_is_better != hib:
            continue  # our primary metric does not measure the same direction (e.g. mt scored by loss)
        value, baseline = float(table[model][col]), float(base[col])
        delta = value - baseline if hib else baseline - value   # improvement, + = better
        clear = None
        if table[model].get(f"{col}_std") and base.get(f"{col}_std"):
            se = math.sqrt((float(table[model][f"{col}_std"]) ** 2 + float(base[f"{col}_std"]) ** 2) / PAPER_RUNS)
            clear = abs(delta) > 2 * se
        out.append(RefRow(c.variant, model, c.cond.label, measure, delta, delta > 0, c.cond.metric, c.mean_diff,
                          c.ci, c.call, hib, clear, baseline, value))
    return out
