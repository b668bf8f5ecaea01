"""The commands that read a run folder: ``status``, ``report``, ``compare`` and ``store repair``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from modtransfer.cli.environment import check_wandb_online, check_writable_dir, load_plugins
from modtransfer.core.errors import UserError


def status_command(args: argparse.Namespace) -> int:
    load_plugins(args)
    from modtransfer.run.status import summarise

    print(summarise(Path(args.run_dir)))
    return 0


def report_command(args: argparse.Namespace) -> int:
    load_plugins(args)
    return write_report(Path(args.run_dir), args.wandb, args.wandb_report, Path(args.out) if args.out else None)


def compare_command(args: argparse.Namespace) -> int:
    from modtransfer.reports.compare import write_comparison

    with report_messages():
        index = write_comparison([Path(p) for p in args.inputs], Path(args.out) if args.out else None)
    print(f"comparison: {index}")
    return 0


class _Say(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{'note' if record.levelno < logging.WARNING else 'warning'}: {record.getMessage()}"


@contextlib.contextmanager
def report_messages() -> Iterator[None]:
    """Print the notes and warnings the report modules log (they never print themselves) on stderr."""
    logger = logging.getLogger("modtransfer.reports")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Say())
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


def store_command(args: argparse.Namespace) -> int:
    from modtransfer.run.store_repair import format_repair, repair

    print(format_repair(repair(Path(args.run_dir))))
    return 0


def write_report(run_dir: Path, wandb_mode: str | None, wandb_report: bool, out: Path | None = None) -> int:
    """Write the transfer report of ``run_dir`` (W&B mode: the given one, else the plan's, else offline)."""
    from modtransfer.run.store import Store

    store = Store(run_dir / "results.sqlite", readonly=True)
    if not store.exists():
        raise UserError(f"{run_dir} has no results.sqlite; pass a run folder like runs/<benchmark>")
    try:
        from modtransfer.reports import build_report
    except ImportError as exc:
        raise UserError(f"the report module is not available: {exc}") from None
    mode = wandb_mode or store.meta().get("plan", {}).get("wandb", {}).get("mode", "offline")
    if mode == "online":
        check_wandb_online()
    if out is None and not os.access(run_dir, os.W_OK):
        raise UserError(f"the run folder {run_dir} is read-only; write the report elsewhere with --out DIR")
    check_writable_dir((out or run_dir / "report").parent, "--out" if out else "the run folder")
    with report_messages():
        index = build_report(run_dir, wandb_mode=mode, wandb_report=wandb_report, out_dir=out)
    print(f"report: {index}")
    return 0
