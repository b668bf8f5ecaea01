"""Write ``RUN_DIR/report/``: index.html, report.md, the main table (md/tex/csv), transfer.csv, cells.csv,
results.json, a README, PNGs (and wandb_report.json).

Everything is written into a temporary folder inside RUN_DIR and renamed into place at the end,
so a report that fails leaves the previous report (or nothing) and never a half-written one.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from modtransfer.core.errors import UserError

from .exports import run_dir_from, write_cells_csv, write_readme, write_results_json
from .folders import replace_folder
from .records import Settings
from .summary import Analysis, analyse_run, transfer_table
from .table import MainTable, as_tables, bool_text, latex, main_table
from .table import write_csv as write_table_csv

T = TypeVar("T")
#: Notes (INFO) and warnings for the user; the CLI shows them, a library caller sees the warnings on stderr.
log = logging.getLogger(__name__)


def write_csv(a: Analysis, path: Path) -> None:
    columns, rows = transfer_table(a)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([bool_text(x) if isinstance(x, bool) else "" if x is None else x for x in row] for row in rows)


def build_report(run_dir: Path, *, wandb_mode: str = "offline", wandb_report: bool = False,
                 settings: Settings | None = None, out_dir: Path | None = None) -> Path:
    """Analyse ``run_dir/results.sqlite`` and write the report; returns the path of ``index.html``.

    ``wandb_mode``: "offline" (default), "online" or "disabled" for the W&B run of job type
    "report". ``wandb_report``: also build a W&B Report (saved as ``wandb_report.json``; saved to
    W&B and its URL logged when online and ``wandb-workspaces`` is installed). ``out_dir``: where
    to write it (default ``run_dir/report``), for a run folder that is read-only.
    """
    from modtransfer.run.wandb_folders import WANDB_MODES
    from modtransfer.run.wandb_pairs import fill_paired_improvements

    from . import render_html, render_md
    from .figures import draw
    from .page import Context, build_document
    from .wandb_push import log_run, write_report_definition

    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"wandb_mode must be one of {', '.join(WANDB_MODES)}, got {wandb_mode!r}")
    run_dir = Path(run_dir)
    a = analyse_run(run_dir, settings)
    final = Path(out_dir) if out_dir is not None else run_dir / "report"
    _check_target(final, run_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=final.parent))
    try:
        figs = draw(a, tmp)
        table = main_table(a)
        doc = build_document(a, figs, Context(run_dir, tmp), table)
        _write_tables(a, table, doc, tmp, run_dir)
        if wandb_mode != "disabled" and os.access(run_dir, os.W_OK):  # runs whose baseline ended after them
            _online_tolerant(wandb_mode, "adding paired improvements to the cells' runs", fill_paired_improvements,
                             run_dir)
        wb = _online_tolerant(wandb_mode, "logging the report run", log_run, a, tmp, figs,
                             run_dir if out_dir is None else final.parent, wandb_mode, final)
        if wb is not None:
            where = wb["url"] or f"offline run {wb['id']} in `{wb['dir']}` (upload with `wandb sync`)"
            doc.sections[-1].blocks.insert(1, _wandb_note(where, wb["project"]))
        if wandb_report:
            _online_tolerant(wandb_mode, "saving the W&B Report", write_report_definition, a, figs, tmp, wandb_mode)
        (tmp / "index.html").write_text(render_html.render(doc, tmp), encoding="utf-8")
        (tmp / "report.md").write_text(render_md.render(doc), encoding="utf-8")
        (tmp / MARKER).write_text(f"{run_dir_from(tmp, run_dir)}\n", encoding="utf-8")  # same depth as final
        write_readme(tmp, a, run_dir)
        if final.exists():
            log.info("replacing the earlier report in %s", final)
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "index.html"


#: A file every report folder holds; a folder without it is never replaced.
MARKER = ".modtransfer-report"


def _check_target(final: Path, run_dir: Path) -> None:
    """Refuse to write over a folder that is not a report (the run folder itself, a user's folder, a file)."""
    if final.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(final.resolve()):
        raise UserError(f"--out {final} is the run folder or holds it; choose a new folder, e.g. {run_dir}/report")
    if final.is_file():
        raise UserError(f"--out {final} is a file; give a folder path")
    if final.is_dir() and any(final.iterdir()) and not (final / MARKER).is_file() \
            and not (final / "index.html").is_file():
        raise UserError(f"--out {final} holds files that are not a modtransfer report; choose an empty or new folder")


def _write_tables(a: Analysis, table: MainTable, doc: Any, folder: Path, run_dir: Path) -> None:
    """The main table as Markdown, LaTeX and CSV, and the exports (transfer.csv, cells.csv, results.json)."""
    from . import render_md
    from .doc import Document, Para, Section

    whole = Section("Main results", "main-table", [*as_tables(table, per_table=len(table.labels)),
                                                   *[b for b in doc.sections[0].blocks if isinstance(b, Para)]])
    md = render_md.render(Document(f"Main results: {a.benchmark}", doc.headline, [whole]))
    (folder / "main_table.md").write_text(md, encoding="utf-8")
    (folder / "main_table.tex").write_text(latex(table, a.benchmark), encoding="utf-8")
    write_table_csv(table, folder / "main_table.csv")
    write_csv(a, folder / "transfer.csv")
    write_cells_csv(a, folder / "cells.csv")
    write_results_json(a, run_dir, folder / "results.json")


def _online_tolerant(mode: str, what: str, fn: Callable[..., T], *args: Any) -> T | None:
    """Call ``fn``; online, a W&B failure (network, login) is a warning and the local report is still written."""
    if mode != "online":
        return fn(*args)
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any W&B/network error must not cost the local report
        log.warning("W&B failed while %s: %s: %s", what, type(e).__name__, e)
        return None


def _wandb_note(where: str, project: str):
    from .doc import Para

    return Para(f"W&B: this report was logged to project `{project}`, {where}.")
