"""The report's "Drop-in and tuned" section: the two regimes side by side (numbers from :mod:`.regimes`)."""

from __future__ import annotations

from .doc import Para, Section, Table
from .regimes import agreement, tuned_effects
from .summary import Analysis, fmt


def tuning_section(a: Analysis) -> Section | None:
    """The two regimes side by side, per variant and task (None without tuning trials)."""
    if not a.trials:
        return None
    margins = {t: a.settings.margin(t)[0] for t in {r["task"] for r in a.trials}}
    effects = tuned_effects(a.trials, margins, a.settings.level)
    s = Section("Drop-in and tuned", "tuning")
    studies = sorted({r["study"] for r in a.trials})
    trials = len({r["trial"] for r in a.trials})
    s.blocks.append(Para(
        f"Drop-in: every arm at the baseline's settings (the main calls above, on validation). Tuned: each arm, "
        f"baseline included, gets the same {trials} quasi-random trials from the plan's search space in each of "
        f"{len(studies)} studies; per study the trial with the best median validation metric is chosen and scored "
        "on the **test** split, which selection never read. Tuned Δ: the mean over studies of the paired test "
        "improvement of the variant's chosen trial over the baseline's (positive = better), with a t interval over "
        "studies. A call **holds** only where both regimes are decided and agree."))
    body = []
    for te in sorted(effects, key=lambda e: (e.task, e.variant)):
        dropin = (a.task_calls.get(te.variant) or {}).get(te.task, "not run")
        ci = f" [{fmt(te.ci[0], 3, True)}, {fmt(te.ci[1], 3, True)}]" if te.ci else ""
        chosen = "; ".join(f"s{st}: " + ", ".join(f"{k}={v}" for k, v in sorted(c[te.variant].items())) + " vs "
                           + ", ".join(f"{k}={v}" for k, v in sorted(c["baseline"].items()))
                           for st, c in sorted(te.chosen.items()))
        body.append([te.variant, te.task, dropin, fmt(te.effect, 3, True) + ci, te.call, agreement(dropin, te.call),
                     chosen or "—"])
    s.blocks.append(Table(["Variant", "Task", "Drop-in call", f"Tuned Δ on test [{a.settings.level:.0%} CI]",
                           "Tuned call", "Regimes", "Chosen trial per study (variant vs baseline)"], body,
                          id="tuning-table", caption="Tuned Δ in the task's units, positive = better; CI over studies"))
    return s
