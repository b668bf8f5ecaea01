"""Two or more benchmarks side by side: ``modtransfer compare A B [...]``.

Each input is a run folder (``results.sqlite``) or a report folder (``results.json`` naming the
run folder it came from). Every input is analysed on its own (paired effects, calls, verdicts:
:func:`~modtransfer.reports.summary.analyse_run`), then the comparisons are matched across
inputs by variant, task and hyper-parameter setting. Size, implementation, budget and task
configuration join the match only where one input itself varies them, so tiny vs small, torch
vs t5 or two commits line up the same variant on the same task. Per match the page shows each
input's Δ with its interval and call, whether the signs of Δ agree and whether the calls agree
(the replication question of Narang et al. 2021, "Do Transformer Modifications Transfer Across
Implementations and Applications?", EMNLP 2021, asked here of two benchmarks), and a "What
changed" table diffs the inputs' plans, sizes, implementations, seeds, budgets and code versions.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modtransfer.core.errors import UserError

from .doc import Bullets, Document, Para, Section, Table, TableCell
from .folders import replace_folder
from .marks import call_cell, ci_text
from .records import Comparison
from .summary import Analysis, analyse_run, fmt

#: Files a comparison folder holds; a folder with other content is never replaced.
OUTPUT_FILES = ("index.html", "compare.md")
#: Calls that decide something (the others say the evidence is missing or too weak).
DECIDED = ("better", "worse", "no change")
#: Longest value shown in the "What changed" table.
MAX_VALUE = 90


@dataclass
class Input:
    """One benchmark to compare: what the user passed, the run folder behind it, its analysis."""

    name: str
    given: Path
    run_dir: Path
    analysis: Analysis


@dataclass
class Match:
    """One variant on one task setting, with each input's comparison (None where it did not run)."""

    variant: str
    task: str
    setting: str
    comps: list[Comparison | None]

    @property
    def signs_agree(self) -> bool | None:
        """Do the point estimates of Δ point the same way in every input? None when one has no estimate."""
        s = [_sign(c) for c in self.comps]
        return None if None in s else len(set(s)) == 1

    @property
    def calls_agree(self) -> bool | None:
        """Is the call the same in every input? None when the variant is missing from one."""
        calls = [c.call for c in self.comps if c is not None]
        return None if len(calls) < len(self.comps) else len(set(calls)) == 1

    @property
    def opposite(self) -> bool:
        """One input calls it better and another worse."""
        return {"better", "worse"} <= {c.call for c in self.comps if c is not None}


def _sign(c: Comparison | None) -> int | None:
    if c is None or not c.n or not math.isfinite(c.mean_diff):
        return None
    return (c.mean_diff > 0) - (c.mean_diff < 0)


# -- inputs -----------------------------------------------------------------------------------
def resolve_run_dir(path: Path) -> Path:
    """The run folder behind ``path`` (a run folder, or a report folder that names its run folder)."""
    if not path.exists():
        raise UserError(f"{path} does not exist; pass run folders (with results.sqlite) or report folders")
    if not path.is_dir():
        raise UserError(f"{path} is a file; pass a run folder (with results.sqlite) or a report folder")
    if (path / "results.sqlite").is_file():
        return path
    info = path / "results.json"
    if info.is_file():
        try:
            run_dir = json.loads(info.read_text(encoding="utf-8")).get("run_dir")
        except (OSError, ValueError, AttributeError):
            run_dir = None
        if not isinstance(run_dir, str) or not run_dir:
            raise UserError(f"{info} names no run folder (key run_dir); rebuild the report with `modtransfer report`")
        run_dir = str((path / run_dir).resolve())   # relative to the report folder (an absolute one stays)
        if not (Path(run_dir) / "results.sqlite").is_file():
            raise UserError(f"the report {path} came from the run folder {run_dir}, which no longer holds "
                            "results.sqlite; pass the run folder itself")
        return Path(run_dir)
    if (path.parent / "results.sqlite").is_file() and (path / "index.html").is_file():
        return path.parent  # a report written by an older version, inside its run folder
    raise UserError(f"{path} is neither a run folder (no results.sqlite) nor a report folder (no results.json); "
                    "pass folders like runs/<benchmark> or runs/<benchmark>/report")


def _names(run_dirs: list[Path]) -> list[str]:
    """A short, distinct name per input: its folder's name (numbered when two share one)."""
    base = [p.resolve().name or "run" for p in run_dirs]
    return [b if base.count(b) == 1 else f"{b}#{base[:i + 1].count(b)}" for i, b in enumerate(base)]


def load_inputs(paths: list[Path]) -> list[Input]:
    """Resolve and analyse every input; fewer than two is a user error."""
    if len(paths) < 2:
        raise UserError(f"compare needs two or more run or report folders, got {len(paths)}: "
                        "modtransfer compare RUN_A RUN_B [RUN_C ...]")
    run_dirs = [resolve_run_dir(Path(p)) for p in paths]
    return [Input(n, Path(p), d, analyse_run(d)) for n, p, d in zip(_names(run_dirs), paths, run_dirs, strict=True)]


# -- matching ---------------------------------------------------------------------------------
def _attrs(c: Comparison) -> dict[str, str]:
    """The parts of a condition other than task and hyper-parameters: size, implementation, budget, task config."""
    cfg = json.loads(c.cond.config_json)
    out = {"size": c.cond.size, "implementation": str(cfg.get("implementation", "modtransfer"))}
    out.update({f"budget.{k}": json.dumps(v) for k, v in (cfg.get("budget") or {}).items()})
    out.update({f"task.{k}": json.dumps(v) for k, v in (cfg.get("task_config") or {}).items()})
    return out


def _within(inputs: list[Input]) -> dict[str, list[str]]:
    """Per task, the condition attributes that some single input varies (these must match too)."""
    out: dict[str, set[str]] = {}
    for inp in inputs:
        seen: dict[str, dict[str, set[str]]] = {}
        for c in inp.analysis.comps:
            per = seen.setdefault(c.cond.task, {})
            for k, v in _attrs(c).items():
                per.setdefault(k, set()).add(v)
        for task, per in seen.items():
            out.setdefault(task, set()).update(k for k, vals in per.items() if len(vals) > 1)
    return {t: sorted(ks) for t, ks in out.items()}


def _setting(c: Comparison, within: list[str]) -> str:
    attrs = _attrs(c)
    parts = [f"{k}={v}" for k, v in sorted(c.cond.hparams.items())]
    parts += [f"{k.split('.', 1)[-1]}={attrs.get(k, '—')}" for k in within]
    return ", ".join(parts)


def _variants(inputs: list[Input]) -> list[str]:
    """Every variant of the inputs, best first in the first input, then those only later inputs ran."""
    return list(dict.fromkeys(v for inp in inputs for v in inp.analysis.order))


def match(inputs: list[Input]) -> list[Match]:
    """Line up the comparisons of every input by (variant, task, setting); ordered by task, then variant."""
    within, order = _within(inputs), _variants(inputs)
    found: dict[tuple[str, str, str], list[Comparison | None]] = {}
    for i, inp in enumerate(inputs):
        for c in inp.analysis.comps:
            key = (c.cond.task, _setting(c, within.get(c.cond.task, [])), c.variant)
            found.setdefault(key, [None] * len(inputs))[i] = c
    keys = sorted(found, key=lambda k: (k[0], order.index(k[2]) if k[2] in order else len(order), k[2], k[1]))
    return [Match(v, t, s, found[(t, s, v)]) for t, s, v in keys]


def agreement_line(matches: list[Match]) -> str:
    """'calls agree on 7/9 pairs; signs agree on 8/9' over the pairs present in every input."""
    full = [m for m in matches if m.calls_agree is not None]
    signed = [m for m in full if m.signs_agree is not None]
    if not full:
        return "no variant x task setting is present in every input, so nothing could be compared"
    decided = sum(all(c is not None and c.call in DECIDED for c in m.comps) for m in full)
    line = (f"calls agree on {sum(bool(m.calls_agree) for m in full)}/{len(full)} pairs ({decided} decided in "
            f"every input); signs agree on {sum(bool(m.signs_agree) for m in signed)}/{len(signed)}")
    opposite = sum(m.opposite for m in full)
    if opposite:
        line += f"; {opposite} pair(s) called better in one input and worse in another"
    return line


# -- what changed -----------------------------------------------------------------------------
def _flat(d: Any, prefix: str) -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d if isinstance(d, str) else json.dumps(d, sort_keys=True, default=str)}


def _seeds(rows: list[dict[str, Any]]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows})
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{len(seeds)} ({seeds[0]}–{seeds[-1]})" if len(seeds) > 1 else f"1 ({seeds[0]})"
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def _joined(rows: list[dict[str, Any]], field: str) -> dict[str, str]:
    """Flattened JSON column ``field`` over ``rows``; a key with several values lists them all."""
    values: dict[str, list[str]] = {}
    for r in rows:
        for k, v in _flat(r.get(field) or {}, field).items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    return {k: ", ".join(sorted(v)) for k, v in values.items()}


def facts(inp: Input) -> dict[str, str]:
    """What an input is: plan, sizes, implementations, seeds, baseline shape, budget and code version."""
    a, rows = inp.analysis, inp.analysis.rows
    plans = a.meta.get("plans") if isinstance(a.meta.get("plans"), list) else []
    out = {"benchmark": a.benchmark, "cells": str(len(rows)),
           "sizes": ", ".join(sorted({str(r["size"]) for r in rows})),
           "implementations": ", ".join(sorted({str((r.get("spec") or {}).get("implementation", "modtransfer"))
                                                for r in rows})),
           "seeds": _seeds(rows), "tasks": ", ".join(sorted({str(r["task"]) for r in rows})),
           "variants": ", ".join(sorted({str(r["variant"]) for r in rows})), "plans recorded": str(len(plans) or 1)}
    out.update(_flat(a.plan, "plan"))
    base = [r for r in rows if r["variant"] == "baseline"] or rows
    out.update({f"baseline {k}": v for k, v in _joined(base, "spec").items()})
    out.update(_joined(rows, "budget"))
    out.update({k.replace("env.", "code.", 1): v for k, v in _joined(rows, "env").items()})
    out.pop("code.commit", None)
    commits = sorted({str((r.get("env") or {}).get("commit") or (r.get("env") or {}).get("git_commit") or "unknown")
                      for r in rows})
    out["code.commit"] = ", ".join(commits)
    return out


#: Fields named in the "unchanged" line when they are the same everywhere.
HEADLINE_FIELDS = ("sizes", "implementations", "seeds", "tasks", "code.commit", "code.modtransfer", "code.torch")


def changes(inputs: list[Input]) -> tuple[list[list[str]], list[str]]:
    """(rows of [field, value per input] that differ, headline fields that are the same everywhere)."""
    per = [facts(i) for i in inputs]
    keys = sorted({k for f in per for k in f}, key=lambda k: (k.startswith("code."), k.startswith("plan."), k))
    rows, same = [], []
    for k in keys:
        vals = [f.get(k, "—") for f in per]
        if len(set(vals)) > 1:
            rows.append([k, *[v if len(v) <= MAX_VALUE else v[: MAX_VALUE - 1] + "…" for v in vals]])
        elif k in HEADLINE_FIELDS:
            same.append(f"{k} ({vals[0]})")
    return rows, same


# -- the page ---------------------------------------------------------------------------------
def _delta(c: Comparison | None) -> str:
    if c is None:
        return "— not run"
    return f"{fmt(c.mean_diff, 3, True)} {ci_text(c.ci, c.n)} n={c.n}"


def _yes_no(x: bool | None) -> TableCell:
    return TableCell("—", "c-missing") if x is None else (TableCell("yes", "c-better") if x else TableCell("no", "c-worse"))


def task_section(task: str, matches: list[Match], inputs: list[Input]) -> Section:
    """One task: per variant (and setting), each input's Δ [CI] and call, and whether they agree."""
    s = Section(f"Task: {task}", "task-" + re.sub(r"[^A-Za-z0-9_-]+", "-", task))
    metrics = list(dict.fromkeys((c.cond.metric, c.cond.higher_is_better) for m in matches for c in m.comps
                                 if c is not None))
    with_setting = any(m.setting for m in matches)
    headers = ["Variant", *(["Setting"] if with_setting else [])]
    for inp in inputs:
        headers += [f"{inp.name}: Δ [CI]", f"{inp.name}: call"]
    headers += ["Signs agree", "Calls agree"]
    rows: list[list[str | TableCell]] = []
    for m in matches:
        row: list[str | TableCell] = [m.variant, *([m.setting or "—"] if with_setting else [])]
        for c in m.comps:
            row += [_delta(c), call_cell(c.call) if c is not None else TableCell("— not run", "c-missing")]
        rows.append([*row, _yes_no(m.signs_agree), _yes_no(m.calls_agree)])
    what = "; ".join(f"`{k}` ({'higher' if hib else 'lower'} is better)" for k, hib in metrics)
    s.blocks.append(Table(headers, rows, id=s.id + "-table",
                          caption=f"{task}: {agreement_line(matches)}. Metric: {what}"))
    if len(metrics) > 1:
        s.blocks.append(Para("**The inputs measure this task with different metrics; their Δ are not comparable.**"))
    return s


def verdict_section(inputs: list[Input]) -> Section:
    s = Section("Verdicts", "verdicts")
    rows: list[list[str | TableCell]] = []
    for v in _variants(inputs):
        got = [inp.analysis.verdicts.get(v, ("— not run", ""))[0] for inp in inputs]
        same = None if "— not run" in got else len(set(got)) == 1
        rows.append([v, *[TableCell(g, f"v-{g}") for g in got], _yes_no(same)])
    s.blocks.append(Table(["Variant", *[i.name for i in inputs], "Same verdict"], rows, id="verdict-compare",
                          caption="Each input's verdict per variant, over the tasks that input ran"))
    return s


def changed_section(inputs: list[Input]) -> Section:
    s = Section("What changed", "changed")
    rows, same = changes(inputs)
    if rows:
        s.blocks.append(Table(["Field", *[i.name for i in inputs]], rows, id="changed-table",
                              caption="Everything that differs between the inputs (plan, cells, baseline shape, "
                                      "budget, code version); fields with several values in one input list them all"))
    else:
        s.blocks.append(Para("Nothing recorded differs between the inputs."))
    if same:
        s.blocks.append(Para("Unchanged: " + "; ".join(same) + "."))
    return s


def build_document(inputs: list[Input], matches: list[Match]) -> Document:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = " vs ".join(i.name for i in inputs)
    doc = Document(f"Comparison: {names}", f"{len(inputs)} benchmarks side by side · generated {now}")
    full = [m for m in matches if m.calls_agree is not None]
    partial = [m for m in matches if m.calls_agree is None]
    items = [f"**{i.name}**: benchmark `{i.analysis.benchmark}`, {len(i.analysis.rows)} cells, "
             f"{len(i.analysis.comps)} comparisons, from `{i.run_dir.resolve()}`"
             + (f" (via the report `{i.given}`)" if i.given.resolve() != i.run_dir.resolve() else "") for i in inputs]
    summary = Section("Summary", "summary", [Para(f"**Across the inputs, {agreement_line(matches)}.**"),
                                             Bullets(items)])
    summary.blocks.append(Para(
        "A pair is one variant on one task setting, matched across the inputs by variant, task and "
        "hyper-parameters (and by size, implementation or budget only where one input itself varies them). "
        f"{len(full)} pair(s) are in every input; {len(partial)} only in some. Δ is the mean paired difference "
        "with the baseline of the same input, signed so that positive is better, with its t interval and n paired "
        "seeds; signs agree when every input's Δ points the same way; calls agree when every input made the "
        "same call (better, worse, no change, unclear, ...)."))
    doc.sections.append(summary)
    for task in sorted({m.task for m in matches}):
        doc.sections.append(task_section(task, [m for m in matches if m.task == task], inputs))
    doc.sections += [verdict_section(inputs), changed_section(inputs)]
    return doc


# -- writing ----------------------------------------------------------------------------------
def default_out(names: list[str]) -> Path:
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", n) for n in names]
    return Path.cwd() / ("compare-" + "-vs-".join(safe))


def _check_out(out: Path, inputs: list[Input]) -> None:
    if out.is_file():
        raise UserError(f"the output folder {out} is a file; give a folder path with --out")
    for i in inputs:
        if out.resolve() == i.run_dir.resolve() or i.run_dir.resolve().is_relative_to(out.resolve()):
            raise UserError(f"the output folder {out} is or holds the input {i.run_dir}; choose a new folder "
                            "with --out")
    if out.is_dir() and any(p.name not in OUTPUT_FILES for p in out.iterdir()):
        raise UserError(f"the output folder {out} holds files that are not a comparison; choose a new folder "
                        "with --out")


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` at ``out``, saying so when it replaces an earlier comparison."""
    if out.exists():
        logging.getLogger(__name__).info("replacing the earlier comparison in %s", out)
    replace_folder(tmp, out)


def write_comparison(paths: list[Path], out: Path | None = None) -> Path:
    """Compare the inputs and write ``out/index.html`` and ``out/compare.md``; returns the HTML's path."""
    from . import render_html, render_md

    inputs = load_inputs(paths)
    out = Path(out) if out is not None else default_out([i.name for i in inputs])
    _check_out(out, inputs)
    doc = build_document(inputs, match(inputs))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".compare-tmp-", dir=out.parent))
    try:
        (tmp / "index.html").write_text(render_html.render(doc, tmp), encoding="utf-8")
        (tmp / "compare.md").write_text(render_md.render(doc), encoding="utf-8")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"
