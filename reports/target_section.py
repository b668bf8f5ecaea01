"""The report's "Time to target" section: steps-to-target ratios per condition and performance profiles.

The numbers come from :mod:`.target` (definitions there); this module only groups the rows by
condition, fills the tables and draws the profile figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .analysis import axis_keys, cond_key, conditions
from .doc import Image, Para, Section, Table
from .summary import Analysis, fmt
from .target import TAU_MAX, TargetCondition, condition_times, profile, ratio_to_baseline


def target_conditions(a: Analysis) -> list[TargetCondition]:
    """Per condition whose cells recorded a curve: its target and every arm's times."""
    axes = axis_keys(a.rows)
    conds = conditions(a.rows)
    rows_of: dict[Any, list[dict[str, Any]]] = {}
    for r in a.rows:
        rows_of.setdefault(cond_key(r, axes), []).append(r)
    out = []
    for key, cond in conds.items():
        rows = rows_of.get(key, [])
        if not any(len(r.get("curve") or []) > 1 for r in rows):
            continue
        declared = (a.settings.tasks.get(cond.task) or {}).get("time_target")
        tc = condition_times(cond, rows, declared if isinstance(declared, int | float) else None)
        if tc is not None and len(tc.arms) > 1:
            out.append(tc)
    return out


def _ratio_cell(r: Any) -> str:
    if r is None or not math.isfinite(r.ratio):
        return "—"
    ci = f" [{r.ci[0]:.2f}, {r.ci[1]:.2f}]" if r.ci else ""
    return f"{r.ratio:.2f}×{ci}"


def _median_steps(tc: TargetCondition, arm: str) -> str:
    m, sec = tc.arms[arm].median_steps(), tc.arms[arm].median_seconds()
    return "not reached" if math.isinf(m) else fmt(m, 4) + (f" ({sec:.3g} s)" if math.isfinite(sec) else "")


def ratio_table(tcs: list[TargetCondition], order: list[str]) -> Table:
    body: list[list[Any]] = []
    for tc in tcs:
        for v in [x for x in order if x in tc.arms]:
            r = ratio_to_baseline(tc, v)
            if r is None:
                continue
            body.append([tc.label, f"{tc.target:.4g} ({tc.source})", v, f"{r.variant_reached}/{r.n_pairs}",
                         f"{r.baseline_reached}/{r.n_pairs}", _median_steps(tc, v), _median_steps(tc, "baseline"),
                         _ratio_cell(r)])
    return Table(["Condition", "Target", "Variant", "Variant reached", "Baseline reached",
                  "Variant median steps (training s)", "Baseline median steps (training s)",
                  "Steps ratio variant/baseline [95% CI]"], body, id="target-table",
                 caption="Steps to the target; ratio < 1: the variant got there sooner. Geometric mean over the "
                         "paired seeds where both arms reached the target, t interval on the log ratios; seeds that "
                         "missed are counted in the 'reached' columns, not averaged")


def _draw_profile(prof: dict[str, Any], folder: Path, name: str) -> str:
    from .plots import new_figure, save

    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    for arm, data in sorted(prof["arms"].items(), key=lambda kv: (kv[0] != "baseline", kv[0])):
        style = {"color": "black", "lw": 2.2} if arm == "baseline" else {"lw": 1.3}
        ax.step(prof["taus"], data["rho"], where="post", label=f"{arm} ({data['score']:.2f})", **style)
    ax.set_xlabel("τ: within this factor of the fastest arm's steps to target")
    ax.set_ylabel("share of tasks (conditions)")
    ax.set_xlim(1.0, TAU_MAX)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower right", title="arm (score)", title_fontsize=7)
    return save(fig, folder / name).name


def target_section(a: Analysis, folder: Path) -> Section | None:
    """Steps-to-target ratios and performance profiles; None when no condition has curves and a variant."""
    tcs = target_conditions(a)
    if not tcs:
        return None
    s = Section("Time to target", "time-to-target")
    s.blocks.append(Para("When did each arm first reach a fixed validation level? The target of a condition is "
                         "the task's declared one, else the baseline's worst final value there (a level every "
                         "baseline seed reached); the step is read "
                         "from the evaluation curve, interpolated between evaluations (so it is as fine as "
                         "`eval_every`); a seed that never reached it counts as a miss (infinite time)."))
    s.blocks.append(ratio_table(tcs, a.order))
    times = {tc.label: {arm: t.median_steps() for arm, t in tc.arms.items()} for tc in tcs}
    prof = profile(times)
    body = [[arm, f"{d['score']:.3f}", *[("miss" if math.isinf(x) else f"{x:.2f}") for x in d["ratios"].values()]]
            for arm, d in sorted(prof["arms"].items(), key=lambda kv: -kv[1]["score"])]
    s.blocks.append(Table(["Arm", "Profile score", *times], body, id="profile-table",
                          caption=f"Per condition: the arm's median steps to target over the fastest arm's "
                                  f"('miss': half or more of its seeds never reached it). Score: the area under the "
                                  f"performance profile for τ from 1 to {TAU_MAX:g}, over {TAU_MAX - 1:g} (1 = fastest "
                                  "everywhere; 0 = never within 4× of the fastest), as in MLCommons AlgoPerf"))
    f = _draw_profile(prof, folder, "performance_profile.png")
    s.blocks.append(Image(f, "Performance profiles of the arms", "Share of conditions on which each arm reached "
                          "the target within τ times the fastest arm's steps; higher and further left is "
                          "faster; baseline in black; the legend gives each arm's score."))
    return s
