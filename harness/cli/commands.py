"""The ``modtransfer`` command line.

    modtransfer ls variants [GLOB] [--size S] [--markdown]
    modtransfer ls tasks [GLOB]
    modtransfer run PLAN.yaml [--variants LIST] [--tasks LIST] [--seeds N] [--plugin FILE.py] [--dry-run]
    modtransfer check VARIANT [--plugin FILE.py] [--tasks LIST]
    modtransfer status runs/<benchmark>
    modtransfer report runs/<benchmark> [--wandb-report]
    modtransfer compare RUN_A RUN_B [RUN_C ...] [--out DIR]
    modtransfer store repair runs/<benchmark>
    modtransfer prepare [TASKS]
    modtransfer bench speed|runner|precision|diagnostics|noise|seeds [OPTIONS]

Errors a user can cause print one line and exit with code 2 before anything trains.
Imports stay lazy: ``ls`` never imports Lightning or W&B.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from modtransfer.cli.environment import load_plugins
from modtransfer.cli.results import compare_command, report_command, status_command, store_command
from modtransfer.cli.run_command import run_command
from modtransfer.core.errors import UserError

#: ``modtransfer bench NAME``: benchmark name -> the module whose ``main(argv)`` runs it.
BENCHMARKS = {"speed": "modtransfer.bench.speed", "runner": "modtransfer.bench.layout_speed",
              "precision": "modtransfer.bench.bf16", "diagnostics": "modtransfer.bench.diag_cost",
              "noise": "modtransfer.bench.noise", "seeds": "modtransfer.bench.seeds"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modtransfer", description="Does this Transformer modification transfer?")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="load variants/components/tasks from a Python file (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", help="list variants, tasks or components")
    ls.add_argument("what", choices=["variants", "tasks", "components", "implementations"])
    ls.add_argument("pattern", nargs="?", default=None, help="glob, e.g. '*glu*'")
    ls.add_argument("--size", default="small", help="size preset for parameter/FLOP counts, or 'all' (default: small)")
    ls.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    ls.add_argument("--no-counts", action="store_true", help="skip parameter and FLOP counts")
    _plugin_option(ls)
    _add_run(sub)
    _add_readers(sub)

    bench = sub.add_parser("bench", help="performance benchmarks (bench speed --help)")
    bench.add_argument("which", choices=list(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark")

    prep = sub.add_parser("prepare", help="fetch and preprocess task data into the cache")
    prep.add_argument("tasks", nargs="?", default="*")
    return p


def _plugin_option(parser: argparse.ArgumentParser) -> None:
    """``--plugin`` also after the subcommand (the top-level option's list is kept when absent)."""
    parser.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py")


def _add_run(sub: argparse._SubParsersAction) -> None:
    from modtransfer.run.executors import EXECUTORS, executor_help
    from modtransfer.run.wandb_folders import WANDB_MODES

    run = sub.add_parser("run", help="run a benchmark plan")
    run.add_argument("plan", help="plan YAML, e.g. configs/bench/smoke.yaml")
    run.add_argument("--variants", help="comma-separated names or globs ('*glu,rmsnorm'); baseline always included")
    run.add_argument("--tasks", help="comma-separated task names or globs")
    run.add_argument("--seeds", type=int, help="number of paired seeds (0..N-1)")
    run.add_argument("--name", help="benchmark name (default: the plan's name)")
    run.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
    run.add_argument("--executor", choices=list(EXECUTORS), help=f"default: the plan's, else auto. {executor_help()}")
    run.add_argument("--workers", metavar="N|auto", help="worker processes / concurrent Ray tasks (default: the plan's, "
                     "else auto: from this machine's cores, load and memory and the cells' size)")
    run.add_argument("--threads", metavar="N|auto", help="torch threads per worker (default: the plan's, else "
                     "OMP_NUM_THREADS, else auto: 1, or 2 for large cells on an idle machine)")
    run.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--wandb", choices=list(WANDB_MODES), help="W&B mode (default: plan's, offline)")
    run.add_argument("--retry-failed", action="store_true", help="run failed and timed-out cells again")
    run.add_argument("--dry-run", action="store_true", help="print the cells and train nothing")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--yes", action="store_true", help="allow a plan of more than 5000 cells")
    run.add_argument("--no-check", action="store_true",
                     help="skip the contract gate on plugin variants (recorded in every row it trains)")
    _plugin_option(run)


def _add_readers(sub: argparse._SubParsersAction) -> None:
    """``check``, ``status``, ``report``, ``compare`` and ``store``."""
    from modtransfer.run.wandb_folders import WANDB_MODES

    check = sub.add_parser("check", help="run the contract suite on a variant")
    check.add_argument("variant")
    check.add_argument("--tasks", help="comma-separated task names (default: all it applies to)")
    _plugin_option(check)

    status = sub.add_parser("status", help="summarise a run folder")
    status.add_argument("run_dir")
    _plugin_option(status)

    report = sub.add_parser("report", help="write the transfer report of a run folder")
    report.add_argument("run_dir")
    report.add_argument("--wandb", choices=list(WANDB_MODES), default=None)
    report.add_argument("--wandb-report", action="store_true", help="also build a W&B Report")
    report.add_argument("--out", help="folder to write the report to (default: RUN_DIR/report)")
    _plugin_option(report)

    cmp = sub.add_parser("compare", help="compare two or more run (or report) folders side by side")
    cmp.add_argument("inputs", nargs="*", metavar="RUN_OR_REPORT", help="run folders or report folders")
    cmp.add_argument("--out", help="folder to write index.html and compare.md to (default: ./compare-A-vs-B)")

    store = sub.add_parser("store", help="maintain a results store (store repair RUN_DIR)")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    repair = store_sub.add_parser("repair", help="rebuild a damaged results.sqlite from its readable rows; "
                                                 "the old file is kept beside it")
    repair.add_argument("run_dir")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `modtransfer run PLAN --dry-run | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


def _check(args: argparse.Namespace) -> int:
    load_plugins(args, strict=True)
    from modtransfer.check.contract import failures, format_results, run_contract

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    results = run_contract(args.variant, tasks)
    print(format_results(results))
    return 1 if failures(results) else 0


def _bench(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(BENCHMARKS[args.which]).main(args.rest) or 0


def _prepare(args: argparse.Namespace) -> int:
    import modtransfer.tasks  # noqa: F401
    from modtransfer.core.task import TASKS

    for name in TASKS.select(args.tasks):
        print(f"preparing {name} ...", flush=True)
        TASKS.get(name)().prepare()
    print("done")
    return 0


def _ls(args: argparse.Namespace) -> int:
    """List from the cache when nothing it depends on changed (no torch import), else build it."""
    import io
    from contextlib import redirect_stderr

    from modtransfer.core import cache as lscache

    if args.what == "variants" and args.size != "all":
        from modtransfer.core.sizes import size_names

        if args.size not in size_names():
            from modtransfer.core.errors import did_you_mean

            raise UserError(f"--size {args.size!r} is not a size preset{did_you_mean(args.size, size_names())}; "
                            f"use one of {', '.join(size_names())} or all")
    plugins = list(dict.fromkeys(getattr(args, "plugin", []) or []))
    key = lscache.listing_key({k: v for k, v in vars(args).items() if k != "plugin"}, plugins)
    hit = lscache.lookup(key)
    if hit is None:
        err = io.StringIO()
        with redirect_stderr(err):
            load_plugins(args)
        from modtransfer.cli.listing import list_components, list_tasks, list_variants

        if args.what == "variants":
            from modtransfer.core.sizes import size_names

            sizes = size_names() if args.size == "all" else [args.size]
            out = "\n\n".join(list_variants(args.pattern, size=s, markdown=args.markdown, counts=not args.no_counts)
                               for s in sizes)
        elif args.what == "tasks":
            out = list_tasks(args.pattern, markdown=args.markdown)
        elif args.what == "implementations":
            from modtransfer.cli.listing import list_implementations

            out = list_implementations(args.pattern, markdown=args.markdown)
        else:
            out = list_components(args.pattern)
        hit = {"out": out, "err": err.getvalue()}
        lscache.save(key, hit["out"], hit["err"])
    if hit["err"]:
        sys.stderr.write(hit["err"])
    print(hit["out"])
    return 0


#: subcommand -> the function that runs it (returns the exit code)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ls": _ls, "run": run_command, "check": _check, "status": status_command, "report": report_command,
    "compare": compare_command, "store": store_command, "bench": _bench, "prepare": _prepare,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
