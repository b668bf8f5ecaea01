"""Write ``RUN_DIR/report/``: index.html, report.md, transfer.csv, PNGs (and wandb_report.json).

Everything is written into a temporary folder inside RUN_DIR and renamed into place at the end,
so a report that fails leaves the previous report (or nothing) and never a half-written one.
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .analysis import Settings
from .summary import Analysis, analyse_run, transfer_table

T = TypeVar("T")


def write_csv(a: Analysis, path: Path) -> None:
    columns, rows = transfer_table(a)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(["" if x is None else x for x in row] for row in rows)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, swapping out an older report only once the new one is complete."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{tmp.name}")
        final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_report(run_dir: Path, *, wandb_mode: str = "offline", wandb_report: bool = False,
                 settings: Settings | None = None, out_dir: Path | None = None) -> Path:
    """Analyse ``run_dir/results.sqlite`` and write the report; returns the path of ``index.html``.

    ``wandb_mode``: "offline" (default), "online" or "disabled" for the W&B run of job type
    "report". ``wandb_report``: also build a W&B Report (saved as ``wandb_report.json``; saved to
    W&B and its URL printed when online and ``wandb-workspaces`` is installed). ``out_dir``: where
    to write it (default ``run_dir/report``), for a run folder that is read-only.
    """
    from . import render_html, render_md
    from .content import build_document
    from .figures import draw
    from .wandb_push import log_run, write_report_definition

    if wandb_mode not in ("offline", "online", "disabled"):
        raise ValueError(f"wandb_mode must be 'offline', 'online' or 'disabled', got {wandb_mode!r}")
    run_dir = Path(run_dir)
    a = analyse_run(run_dir, settings)
    final = Path(out_dir) if out_dir is not None else run_dir / "report"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=final.parent))
    try:
        figs = draw(a, tmp)
        doc = build_document(a, figs)
        wb = _online_tolerant(wandb_mode, "logging the report run", log_run, a, tmp, figs,
                             run_dir if out_dir is None else final.parent, wandb_mode)
        if wb is not None:
            where = wb["url"] or f"offline run {wb['id']} in `{wb['dir']}` (upload with `wandb sync`)"
            doc.sections[-1].blocks.insert(1, _wandb_note(where, wb["project"]))
        if wandb_report:
            _online_tolerant(wandb_mode, "saving the W&B Report", write_report_definition, a, figs, tmp, wandb_mode)
        (tmp / "index.html").write_text(render_html.render(doc, tmp), encoding="utf-8")
        (tmp / "report.md").write_text(render_md.render(doc), encoding="utf-8")
        write_csv(a, tmp / "transfer.csv")
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "index.html"


def _online_tolerant(mode: str, what: str, fn: Callable[..., T], *args: Any) -> T | None:
    """Call ``fn``; online, a W&B failure (network, login) is a warning and the local report is still written."""
    if mode != "online":
        return fn(*args)
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any W&B/network error must not cost the local report
        print(f"warning: W&B failed while {what}: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def _wandb_note(where: str, project: str):
    from .doc import Para

    return Para(f"W&B: this report was logged to project `{project}`, {where}.")
