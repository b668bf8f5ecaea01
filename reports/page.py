"""The report page: which sections it has, in which order, and why an absent one is absent.

:data:`SECTIONS` is the one list of the optional sections. Adding a section touches two files: the
module with its builder (``builder(a, figs, ctx) -> Section | None``; None = nothing to show) and one
line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .content import (
    agreement_section,
    cost_section,
    curves_section,
    effects_section,
    noise_section,
    problems_section,
    repro_section,
    verdict_section,
)
from .doc import Document, Section
from .figures import Figures
from .front import caveats, front_blocks, headline, main_section, sweep_section
from .happened import happened_section
from .lrcurves import lr_section
from .records import BASELINE
from .regimes_section import tuning_section
from .studies import implementations_section, plateau_section, reference_section, sensitivity_section
from .summary import Analysis
from .survival import heldout_section
from .table import MainTable, main_table
from .target_section import target_section
from .tasks_section import tasks_section


@dataclass
class Context:
    """Where the report comes from and where it is being written (figures a section draws go to ``folder``)."""

    run_dir: Path
    folder: Path


Builder = Callable[[Analysis, Figures, Context], Section | None]


def _plateau(a: Analysis, figs: Figures, ctx: Context) -> Section | None:
    settings = a.plateau()
    return plateau_section(settings, figs) if settings else None


def _implementations(a: Analysis, figs: Figures, ctx: Context) -> Section | None:
    rows = a.across_implementations()
    return implementations_section(rows) if rows else None


#: (title, builder, why it is left out when the builder returns None), in page order
SECTIONS: list[tuple[str, Builder, str]] = [
    ("Tasks", lambda a, f, c: tasks_section(a), "no task of this run has a card"),
    ("Verdicts", lambda a, f, c: verdict_section(a, f) if a.order else None, "no variant besides the baseline"),
    ("Baseline per hyper-parameter setting", lambda a, f, c: sweep_section(a, f), "one setting per task"),
    ("Noise floor and margins", lambda a, f, c: noise_section(a) if a.comps else None,
     "no comparison with the baseline"),
    ("Effects per task", lambda a, f, c: effects_section(a, f) if a.comps else None, "no comparison with the baseline"),
    ("Learning curves", lambda a, f, c: curves_section(a, f) if f.curves else None, "no cell recorded a curve"),
    ("Agreement between tasks", lambda a, f, c: agreement_section(a, f) if a.agreement.pairs else None,
     "needs at least two tasks and two variants"),
    ("Cost next to benefit", lambda a, f, c: cost_section(a) if a.order else None, "no variant besides the baseline"),
    ("Drop-in and tuned", lambda a, f, c: tuning_section(a), "the plan has no tuning section"),
    ("Learning-rate curves", lambda a, f, c: lr_section(a, c.folder), "no task varies lr over two or more values"),
    ("Time to target", lambda a, f, c: target_section(a, c.folder) if a.order else None,
     "no variant besides the baseline, or no cell recorded an evaluation curve"),
    ("Held-out task variants", lambda a, f, c: heldout_section(a),
     "no held-out task variant ran beside the task it varies"),
    ("Reference study", lambda a, f, c: reference_section(a) if a.reference else None,
     "no variant of this run has a row in Narang et al. 2021's table on a task it measured"),
    ("Hyper-parameter sensitivity", lambda a, f, c: sensitivity_section(a, f) if a.sensitivity else None,
     "no variant was compared over hyper-parameter settings"),
    ("Training sensitivity", _plateau, "no task declares a plateau threshold for these rows"),
    ("Across implementations", _implementations, "one implementation only"),
    ("What happened", lambda a, f, c: happened_section(a, c.run_dir, c.folder),
     "no cell recorded a diagnostic event, diverged or lost to the baseline"),
]


def build_document(a: Analysis, figs: Figures, ctx: Context, table: MainTable | None = None) -> Document:
    """The report: headline, caveats, the main table first, then the evidence behind it."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings = f" in {len(a.labels)} settings" if len(a.labels) != len(a.groups) else ""
    who = (f"{len(a.order)} variant(s) against `{BASELINE}`" if a.order else f"`{BASELINE}` only")
    sub = (f"Benchmark `{a.benchmark}` · {len(a.rows)} cells · {who} on {len(a.groups)} task(s){settings} · "
           f"generated {now}")
    doc = Document(f"Transfer report: {a.benchmark}", sub, headline=headline(a), banner=caveats(a),
                   front=front_blocks(a))
    doc.sections = [main_section(a, table if table is not None else main_table(a))]
    for title, builder, why in SECTIONS:
        section = builder(a, figs, ctx)
        if section is not None:
            doc.sections.append(section)
        else:
            doc.omitted.append(f"**{title}**: {why}.")
    doc.sections += [problems_section(a), repro_section(a)]
    return doc
