"""The headline per variant, "does the gain transfer?": one intersection-union test across tasks.

"Better everywhere" is the claim that the variant is better on every task. Its null is the union of
the per-task nulls, so by the intersection-union principle (Berger 1982, "Multiparameter hypothesis
testing and acceptance sampling", Technometrics 24(4):295-300; Berger & Hsu 1996, "Bioequivalence
trials, intersection-union tests and equivalence confidence sets", Statistical Science 11(4):283-319)
it is declared at level alpha when each task's own test rejects at level alpha, with no penalty for
the number of tasks; its p-value is the largest of the per-task p-values. "Worse everywhere" is the
same the other way, and "no change everywhere" takes the largest of the per-task TOST p-values
against each task's margin (Schuirmann 1987; TOST is itself an intersection-union test).

One-sided or two-sided: a task enters "better" with twice its one-sided paired t p-value
(:func:`modtransfer.reports.stats.directional_p`), i.e. the per-task two-sided test at alpha, split by
sign (one-sided at alpha / 2). So a task that the headline counts as better is one the same
uncorrected two-sided test would call better, and under A/A "better everywhere" and "worse
everywhere" are each declared at most alpha / 2 of the time, either of them at most alpha, for any
number of tasks (``tests/test_calibration.py`` measures it). The price is the power of a one-sided
test at alpha / 2 rather than alpha.

Across variants: one family per claim (better, worse, no change), each corrected by the report's
correction (Benjamini & Hochberg 1995 by default) over the variants whose headline could be tested;
never across tasks. Which task conditions enter a variant's intersection: every one it ran whose
baseline learned (with hyper-parameter axes each setting is one member). A task whose baseline did
not learn, or that the variant did not run, is left out and named; one with too few paired seeds
blocks every claim; a diverged or failed cell makes the headline "unstable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import stats
from .records import Comparison, Settings

CLAIMS = ("better", "worse", "no change")
KINDS = ("better everywhere", "worse everywhere", "no change everywhere", "mixed", "unclear", "unstable")
#: The headline's rule, in words (printed under the headline table).
HEADLINE_RULE = (
    "Per variant, one intersection-union test across tasks (Berger 1982; Berger & Hsu 1996): **better everywhere** "
    "when every task's paired t test is significant in the better direction at level α (two-sided, so one-sided at "
    "α/2), with no penalty for the number of tasks; its p is the largest per-task p. **worse everywhere** the same "
    "way round; **no change everywhere** when every task's TOST against its margin is significant (p = the largest "
    "TOST p). The p-values of each claim are then corrected across variants only (one family per claim). "
    "Otherwise **unstable** when a cell diverged or failed; **mixed** when the per-task calls below disagree (two "
    "of better, worse, no change); else **unclear**, with the tasks that block the nearest claim. Tasks whose "
    "baseline did not learn are left out; a task with too few paired seeds blocks every claim."
)


@dataclass
class TaskTest:
    """One task condition of a variant, as the headline sees it (p-values uncorrected)."""

    label: str
    task: str
    metric: str
    n: int
    mean_diff: float                 # signed, > 0 = better
    p: dict[str, float]              # claim -> this task's p (NaN: not testable)
    status: str                      # better / worse / no change / unclear / too few seeds / unstable
    call: str = ""                   # the per-task call of the report (corrected across the benchmark)


@dataclass
class Headline:
    variant: str
    kind: str = "unclear"
    tests: list[TaskTest] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)     # "task (why)"
    p: dict[str, float] = field(default_factory=dict)     # claim -> intersection-union p
    q: dict[str, float] = field(default_factory=dict)     # claim -> corrected across variants
    family: int = 0                                       # variants in each claim's family
    blockers: list[str] = field(default_factory=list)
    why: str = ""

    @property
    def claim(self) -> str:
        """The claim the headline reached, else the nearest one: the most tasks at level alpha, then the smallest
        p; "" when none is testable."""
        if self.kind.endswith("everywhere"):
            return self.kind.removesuffix(" everywhere")
        finite = {k: v for k, v in self.p.items() if math.isfinite(v)}
        support = {k: sum(t.status == k for t in self.tests) for k in finite}
        return min(finite, key=lambda k: (-support[k], finite[k], CLAIMS.index(k))) if finite else ""


def task_test(c: Comparison, settings: Settings) -> TaskTest:
    """The per-task p-values of the three claims and the task's status at level alpha."""
    tt = TaskTest(c.cond.label, c.cond.task, c.cond.metric, c.n_used or c.n, c.mean_diff,
                  dict.fromkeys(CLAIMS, math.nan), "unclear", c.call)
    if c.n_failed:
        tt.status = "unstable"
        return tt
    if c.n_used < settings.min_seeds or not math.isfinite(c.p_value):
        tt.status = "too few seeds"
        return tt
    better, worse = stats.directional_p(np.asarray(c.diffs), settings.looks)
    same = c.p_equiv if math.isfinite(c.p_equiv) else 1.0     # no margin: "no change" cannot be shown
    tt.p = {"better": float(better), "worse": float(worse), "no change": float(same)}
    hit = [k for k in CLAIMS if tt.p[k] < settings.alpha]
    tt.status = hit[0] if hit else "unclear"
    return tt


def iut(p_better: np.ndarray, p_worse: np.ndarray, p_same: np.ndarray, alpha: float, correction: str = "bh"
        ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(kinds, p, q) from per-task p-values of shape (reps, variants, tasks).

    p per claim: the largest over tasks (NaN when any task is not testable; pad absent tasks with 0).
    q: adjusted across the variants of a row, NaN ones left out. kinds: "<claim> everywhere" for the
    first claim (better, worse, no change) with q < alpha, else "" (decided elsewhere).
    """
    p = {k: np.max(np.asarray(x, dtype=float), axis=-1) for k, x in zip(CLAIMS, (p_better, p_worse, p_same),
                                                                          strict=True)}
    q = {k: _adjust_rows(v, correction) for k, v in p.items()}
    kinds = np.full(p["better"].shape, "", dtype=object)
    for k in reversed(CLAIMS):
        kinds = np.where(q[k] < alpha, f"{k} everywhere", kinds)
    return kinds, p, q


def _adjust_rows(p: np.ndarray, method: str) -> np.ndarray:
    out = np.full(p.shape, np.nan)
    for i in range(p.shape[0]):
        ok = np.isfinite(p[i])
        if ok.any():
            out[i, ok] = stats.adjust(p[i, ok], method)
    return out


def headlines(comps: list[Comparison], settings: Settings) -> dict[str, Headline]:
    """The headline of every variant in ``comps``."""
    heads: dict[str, Headline] = {}
    for c in comps:
        h = heads.setdefault(c.variant, Headline(c.variant))
        if c.gate.status == "not learned":
            h.left_out.append(f"{c.cond.label} (baseline did not learn)")
        elif not c.n and not c.n_failed:
            h.left_out.append(f"{c.cond.label} (no paired seed)")
        else:
            h.tests.append(task_test(c, settings))
    names = list(heads)
    width = max((len(h.tests) for h in heads.values()), default=0)
    arrays = np.zeros((len(CLAIMS), 1, len(names), max(1, width)))
    for j, v in enumerate(names):
        h = heads[v]
        if not h.tests or any(t.status == "unstable" for t in h.tests):
            arrays[:, 0, j, :] = np.nan                       # not tested: out of every family
            continue
        for i, t in enumerate(h.tests):                       # absent tasks stay 0, neutral for the max
            arrays[:, 0, j, i] = [t.p[k] for k in CLAIMS]
    kinds, p, q = iut(arrays[0], arrays[1], arrays[2], settings.alpha, settings.correction)
    for j, v in enumerate(names):
        h = heads[v]
        h.p = {k: float(p[k][0, j]) for k in CLAIMS}
        h.q = {k: float(q[k][0, j]) for k in CLAIMS}
        h.family = int(np.isfinite(p["better"][0]).sum())
        _finish(h, str(kinds[0, j]), settings)
    return heads


def _finish(h: Headline, kind: str, settings: Settings) -> None:
    """The kind of an undecided headline, what blocks it, and the sentence that says why."""
    calls = {t.call for t in h.tests}
    if any(t.status == "unstable" for t in h.tests):
        h.kind = "unstable"
        bad = [t.label for t in h.tests if t.status == "unstable"]
        h.why = f"a cell diverged or failed on {', '.join(bad)}"
    elif not h.tests:
        h.kind, h.why = "unclear", "no task with paired seeds whose baseline learned"
    elif kind:
        h.kind = kind
        claim, n = h.claim, len(h.tests)
        h.why = (f"{claim} on all {n} task condition(s) at level {settings.alpha} (largest per-task p "
                 f"{h.p[claim]:.2g}; q {h.q[claim]:.2g} over {h.family} variant(s))")
        if n == 1:
            h.why += "; one task only, so transfer is untested"
    elif len(calls & set(CLAIMS)) >= 2:
        h.kind = "mixed"
        h.blockers = [f"{t.label} ({t.call})" for t in h.tests if t.call in CLAIMS]
        h.why = "the tasks disagree: " + ", ".join(h.blockers)
    else:
        h.kind = "unclear"
        h.blockers = _blockers(h, settings.alpha)
        claim = h.claim
        if not claim:  # some task cannot be tested, so no claim can hold everywhere
            h.why = "no claim can be tested on every task; untestable: " + ", ".join(h.blockers)
        elif h.blockers:
            h.why = (f"nearest claim {claim} everywhere (p {h.p[claim]:.2g}), blocked by "
                     + ", ".join(h.blockers))
        else:
            h.why = (f"every task passes {claim} at level {settings.alpha} (p {h.p[claim]:.2g}), but not after the "
                     f"correction over {h.family} variant(s) (q {h.q[claim]:.2g})")
    if h.left_out:
        h.why += "; left out: " + ", ".join(h.left_out)


def _blockers(h: Headline, alpha: float) -> list[str]:
    """The task conditions that keep an unclear headline from its nearest claim."""
    claim = h.claim
    out = []
    for t in h.tests:
        if t.status == "too few seeds":
            out.append(f"{t.label} (too few seeds)")
        elif claim and not t.p[claim] < alpha:
            out.append(f"{t.label} ({t.status}, p {t.p[claim]:.2g})")
    return out
