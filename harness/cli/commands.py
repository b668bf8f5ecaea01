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
    modtransfer bench speed|runner|precision|diagnostics [OPTIONS]

Errors a user can cause print one line and exit with code 2 before anything trains.
Imports stay lazy: ``ls`` never imports Lightning or W&B.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modtransfer.core.errors import UserError

if TYPE_CHECKING:
    from modtransfer.run.layout import Layout
    from modtransfer.run.plan import Plan
    from modtransfer.run.store import Store


def _parser() -> argparse.ArgumentParser:
    from modtransfer.run.runner import EXECUTORS, executor_help

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
    ls.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py")

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
    run.add_argument("--wandb", choices=["offline", "online", "disabled"], help="W&B mode (default: plan's, offline)")
    run.add_argument("--retry-failed", action="store_true", help="run failed and timed-out cells again")
    run.add_argument("--dry-run", action="store_true", help="print the cells and train nothing")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--yes", action="store_true", help="allow a plan of more than 5000 cells")
    run.add_argument("--no-check", action="store_true",
                     help="skip the contract gate on plugin variants (recorded in every row it trains)")
    run.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py")

    check = sub.add_parser("check", help="run the contract suite on a variant")
    check.add_argument("variant")
    check.add_argument("--tasks", help="comma-separated task names (default: all it applies to)")
    check.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py")

    status = sub.add_parser("status", help="summarise a run folder")
    status.add_argument("run_dir")
    status.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py")

    report = sub.add_parser("report", help="write the transfer report of a run folder")
    report.add_argument("run_dir")
    report.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None)
    report.add_argument("--wandb-report", action="store_true", help="also build a W&B Report")
    report.add_argument("--out", help="folder to write the report to (default: RUN_DIR/report)")
    report.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py")

    cmp = sub.add_parser("compare", help="compare two or more run (or report) folders side by side")
    cmp.add_argument("inputs", nargs="*", metavar="RUN_OR_REPORT", help="run folders or report folders")
    cmp.add_argument("--out", help="folder to write index.html and compare.md to (default: ./compare-A-vs-B)")

    store = sub.add_parser("store", help="maintain a results store (store repair RUN_DIR)")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    repair = store_sub.add_parser("repair", help="rebuild a damaged results.sqlite from its readable rows; "
                                                 "the old file is kept beside it")
    repair.add_argument("run_dir")

    bench = sub.add_parser("bench", help="performance benchmarks (bench speed --help)")
    bench.add_argument("which", choices=["speed", "runner", "precision", "diagnostics"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark")

    prep = sub.add_parser("prepare", help="fetch and preprocess task data into the cache")
    prep.add_argument("tasks", nargs="?", default="*")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130


def _load_plugins(args: argparse.Namespace, *, strict: bool = False) -> list[str]:
    """Load entry points and ``--plugin`` files; ``strict``: a failed ``--plugin`` file is exit 2."""
    from modtransfer.core.plugins import load_plugins, raise_problems, report_problems

    files = list(dict.fromkeys(getattr(args, "plugin", []) or []))
    load_plugins(files)
    if strict:
        raise_problems(files)
    report_problems(files)
    return files


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "ls":
        return _ls(args)
    if args.command == "run":
        return _run(args)
    if args.command == "check":
        _load_plugins(args, strict=True)
        from modtransfer.check.contract import failures, format_results, run_contract

        tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
        results = run_contract(args.variant, tasks)
        print(format_results(results))
        return 1 if failures(results) else 0
    if args.command == "status":
        _load_plugins(args)
        from modtransfer.run.status import summarise

        print(summarise(Path(args.run_dir)))
        return 0
    if args.command == "report":
        _load_plugins(args)
        return _report(Path(args.run_dir), args.wandb, args.wandb_report, Path(args.out) if args.out else None)
    if args.command == "compare":
        from modtransfer.reports.compare import write_comparison

        print(f"comparison: {write_comparison([Path(p) for p in args.inputs], Path(args.out) if args.out else None)}")
        return 0
    if args.command == "store":
        from modtransfer.run.store import format_repair, repair

        print(format_repair(repair(Path(args.run_dir))))
        return 0
    if args.command == "bench":
        import importlib

        module = importlib.import_module(f"modtransfer.bench.{args.which}")
        return module.main(args.rest) or 0
    if args.command == "prepare":
        import modtransfer.tasks  # noqa: F401
        from modtransfer.core.task import TASKS

        for name in TASKS.select(args.tasks):
            print(f"preparing {name} ...", flush=True)
            TASKS.get(name)().prepare()
        print("done")
        return 0
    raise AssertionError(args.command)


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
            _load_plugins(args)
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


def _report(run_dir: Path, wandb_mode: str | None, wandb_report: bool, out: Path | None = None) -> int:
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
    index = build_report(run_dir, wandb_mode=mode, wandb_report=wandb_report, out_dir=out)
    print(f"report: {index}")
    return 0


def _run(args: argparse.Namespace) -> int:
    plugins = [str(Path(p).resolve()) for p in _load_plugins(args, strict=True)]
    from modtransfer.run.plan import load_plan
    from modtransfer.run.runner import resolve_layout
    from modtransfer.run.store import Store

    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    plan = load_plan(args.plan, variants=args.variants, tasks=args.tasks, seeds=args.seeds, name=args.name,
                     allow_large=args.yes)
    if args.wandb:
        plan.wandb["mode"] = args.wandb
    check_device(args.device)
    if args.no_check:
        for c in plan.all_cells:
            if c.code:
                object.__setattr__(c, "gate", "skipped")
    elif not args.dry_run:
        from modtransfer.check.gate import gate
        from modtransfer.core.task import default_cache_dir

        cache_root = Path(os.environ["MODTRANSFER_CACHE"]) if os.environ.get("MODTRANSFER_CACHE") else default_cache_dir()
        lines = gate(list(plan.variants), list(plan.tasks), cache_root)
        if lines:
            raise UserError(f"{len(lines)} contract check(s) failed for plugin variants, nothing trained "
                            "(--no-check skips this gate):\n  " + "\n  ".join(lines))
    executor = args.executor or plan.executor
    workers = _count_or_auto("--workers", args.workers, None if args.executor == "local" else plan.workers)
    threads = _count_or_auto("--threads", args.threads, plan.threads)
    if executor == "local" and workers not in (None, 1):
        raise UserError(f"--workers {workers} needs --executor auto or processes: the local executor trains in "
                        "this process")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("the ray executor needs Ray: pip install 'modtransfer[ray]'") from None
    run_dir = Path(args.runs_dir) / plan.name
    if not args.dry_run:
        check_writable_dir(Path(args.runs_dir), "--runs-dir")
        if plan.wandb["mode"] == "online":
            check_wandb_online()
    store = Store(run_dir / "results.sqlite")
    done = store.done_ids()
    if args.retry_failed and not args.dry_run:
        failed = {r["cell_id"] for r in store.rows() if r["status"] in ("failed", "timeout")}
        done -= failed
    todo = [c for c in plan.cells if c.cell_id not in done]
    layout = resolve_layout(executor, todo, workers=workers, threads=threads, device=args.device)

    if args.dry_run:
        from modtransfer.run.status import estimate_seconds

        n_seeds = len(plan.seeds)
        seeds_txt = (f"adaptive seeds, looks at {', '.join(map(str, plan.looks))}" if plan.adaptive
                     else f"{n_seeds} seeds")
        print(f"plan {plan.name!r}: {len(plan.cells)} cells "
              f"({len(plan.variants)} variants x {len(plan.tasks)} tasks x {seeds_txt}"
              + (f" x {len(plan.all_cells) // max(1, len(plan.variants) * len(plan.tasks) * n_seeds)} hparams"
                 if plan.hparams else "") + f"), size {plan.size}; run folder {run_dir}")
        for c in plan.cells:
            mark = "done " if c.cell_id in done else "todo "
            print(f"  {mark} {c.cell_id}  {c.label}  steps={c.budget.steps} batch={c.budget.batch_size}")
        for s in plan.skipped:
            print(f"  skip  {s['task']}/{s['variant']}: {s['reason']}")
        if plan.adaptive:
            more = len([c for c in plan.all_cells if c.cell_id not in done]) - len(todo)
            print(f"  + up to {more} more cells in later rounds, only for variant x task pairs still undecided")
        eta = estimate_seconds(store, todo)
        eta_txt = f"; estimated {eta:.0f} s of training left (from this store's measured speeds)" if eta else ""
        print(f"{len(todo)} to train, {len(plan.cells) - len(todo)} already done, {len(plan.skipped)} skipped{eta_txt}")
        print(layout_line(executor, layout))
        for line in _power(plan, store):
            print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
        return 0

    cache = os.environ.get("MODTRANSFER_CACHE")
    # prepare every task's data before anything trains (a fetch problem is a user error, exit 2)
    from modtransfer.core.task import TASKS

    for tname in plan.tasks:
        if any(c.task == tname for c in todo):
            TASKS.get(tname)(plan.task_config.get(tname, {}), cache).prepare()

    task_info = _task_info(plan, cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    from modtransfer.run.envinfo import clean_stale_tmp, run_tmp

    clean_stale_tmp(run_dir)  # temporary files left by killed runs of this folder
    with run_tmp(run_dir):    # before anything imports W&B, which makes temporary folders at import
        return _train(args, plan, store, run_dir, todo, task_info, plugins, executor, layout, cache)


def _count_or_auto(flag: str, value: str | None, default: int | None) -> int | None:
    """A ``--workers``/``--threads`` value: a count, or None for auto; ``default`` when not given."""
    if value is None:
        return default
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{flag} must be an integer >= 1 or auto, got {value!r}")
    return int(value)


def layout_line(executor: str, layout: Layout) -> str:
    """The line every run starts with: the executor and the worker x thread layout it chose, and why."""
    runs = f" -> {layout.executor}" if executor == "auto" else ""
    return (f"executor {executor}{runs}: {layout.describe()}; set workers/threads in the plan or "
            "--workers/--threads to change it")


def _train(args: argparse.Namespace, plan: Plan, store: Store, run_dir: Path, todo: list, task_info: dict,
           plugins: list[str], executor: str, layout: Layout, cache: str | None) -> int:
    """Record the plan and its task declarations, train the cells (in rounds with adaptive seeds), report."""
    from modtransfer.run.runner import Progress, execute, print_table, results_table

    _store_plan(store, {**plan.to_dict(), "source": str(Path(args.plan).resolve()),
                        "selection": {"variants": args.variants, "tasks": args.tasks, "seeds": args.seeds},
                        "plugins": plugins})
    store.set_meta("tasks", {**(store.meta().get("tasks") or {}), **task_info})
    store.set_meta("skipped", plan.skipped)
    if args.retry_failed:
        for status in ("failed", "timeout"):
            store.delete(status)
    print(f"benchmark {plan.name!r}: {len(todo)} cells to train ({len(plan.cells) - len(todo)} already done)"
          + (f"; adaptive seeds, looks at {', '.join(map(str, plan.looks))}" if plan.adaptive else ""), flush=True)
    print(layout_line(executor, layout), flush=True)
    look = 0
    while True:
        progress = Progress(len(todo))
        try:
            execute(plan, run_dir, todo, executor=executor, layout=layout, plugins=plugins, cache_dir=cache,
                    device=args.device, progress=progress, ray_address=args.ray_address)
        finally:
            progress.close()
        look += 1
        if not plan.adaptive or look >= len(plan.looks):
            break
        pairs = _undecided(plan, store, plan.looks[look - 1])
        if not pairs:
            print(f"adaptive seeds: every pair decided at {plan.looks[look - 1]} seeds", flush=True)
            break
        done = store.done_ids()
        todo = [c for c in plan.cells_through(plan.looks[look], pairs) if c.cell_id not in done]
        print(f"adaptive seeds: {len(pairs)} undecided variant x task pair(s); round {look + 1} up to "
              f"{plan.looks[look]} seeds: {len(todo)} cells", flush=True)
    header, body = results_table(plan, store)
    print_table(header, body)
    for s in plan.skipped:
        print(f"n/a: {s['variant']} on {s['task']}: {s['reason']}")
    print(f"results store: {store.path}")
    if not args.no_report:
        try:
            _report(run_dir, None, False)
        except UserError as exc:
            print(f"report not written: {exc}", file=sys.stderr)
    return _exit_code(plan, store)


def _exit_code(plan: Plan, store: Store) -> int:
    """0 when every cell of the plan in the store ended done or diverged; 1 (with why) when any failed or timed out."""
    from collections import Counter

    ids = {c.cell_id for c in plan.all_cells}
    bad = [r for r in store.rows() if r["cell_id"] in ids and r["status"] in ("failed", "timeout")]
    if not bad:
        return 0
    counts = Counter(r["status"] for r in bad)
    first = next(((r.get("error") or "").strip().splitlines() or [""])[-1] for r in bad)
    print(f"error: {', '.join(f'{n} cell(s) {s}' for s, n in counts.items())}; first: {bad[0]['task']}/"
          f"{bad[0]['variant']}/{bad[0]['seed']}: {first[:200]}; see `modtransfer status` and rerun with "
          "--retry-failed", file=sys.stderr)
    return 1


DEVICES = ("auto", "cpu", "cuda", "mps")


def check_device(device: str) -> None:
    """--device names a device this machine has (before any training)."""
    kind = device.split(":", 1)[0]
    if kind not in DEVICES or (":" in device and not device.split(":", 1)[1].isdigit()):
        raise UserError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if kind in ("auto", "cpu"):
        return
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu "
                            "(or auto)")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: the Apple GPU backend is not available here; use --device cpu")


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is (or can become) a folder this process can write, checked without leaving anything behind."""
    import tempfile

    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a file, not a folder; pass a folder (e.g. runs)")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UserError(f"{what} {str(path)!r} cannot be written ({exc.strerror or exc} in {probe}); pass a folder "
                        "you can write") from None


WANDB_CHECK_SECONDS = 8.0


def check_wandb_online() -> None:
    """Online W&B needs a key, and the key must be accepted within a few seconds (a bad network hangs for minutes)."""
    import threading

    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            import netrc

            auth = netrc.netrc().authenticators("api.wandb.ai")
            key = auth[2] if auth else None
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        raise UserError("W&B online mode needs an API key: run `wandb login` or set WANDB_API_KEY, or use "
                        "--wandb offline (and `wandb sync` later)")
    result: dict[str, object] = {}

    def verify() -> None:
        try:
            import wandb

            result["ok"] = bool(wandb.login(key=key, verify=True, relogin=True, timeout=int(WANDB_CHECK_SECONDS)))
        except Exception as exc:  # noqa: BLE001 - any failure means the login cannot be used
            result["error"] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=verify, daemon=True)
    t.start()
    t.join(WANDB_CHECK_SECONDS)
    if t.is_alive():
        raise UserError(f"W&B did not answer within {WANDB_CHECK_SECONDS:.0f} s (no network?); use --wandb offline "
                        "and `wandb sync` the run folders later")
    if not result.get("ok"):
        why = str(result.get("error", "the key was refused")).splitlines()[0][:200]
        raise UserError(f"W&B online login failed ({why}); check the key (`wandb login --relogin`) or use "
                        "--wandb offline")


def _store_plan(store: Store, plan: dict) -> None:
    """Keep every plan that wrote to a store (``plans``, oldest first); ``plan`` is the latest."""
    import json

    meta = store.meta()
    plans = meta.get("plans") if isinstance(meta.get("plans"), list) else []
    if not plans and isinstance(meta.get("plan"), dict):
        plans = [meta["plan"]]
    same = [p for p in plans if json.dumps(p, sort_keys=True, default=str) == json.dumps(plan, sort_keys=True, default=str)]
    if not same:
        plans.append(plan)
    store.set_meta("plans", plans)
    store.set_meta("plan", plan)


def _declared(plan: Plan) -> dict[str, dict]:
    """What each task of the plan declares for the statistics (margin, seed noise), without touching data."""
    from modtransfer.core.task import TASKS

    out = {}
    for name in plan.tasks:
        cls = TASKS.get(name)
        out[name] = {k: getattr(cls, k) for k in ("margin", "noise_sd", "trivial_name") if hasattr(cls, k)}
    return out


def _task_info(plan: Plan, cache: str | None) -> dict[str, dict]:
    """Declarations plus the trivial score of each task, computed from its prepared data."""
    from modtransfer.core.task import TASKS

    out = _declared(plan)
    for name in plan.tasks:
        task = TASKS.get(name)(plan.task_config.get(name, {}), cache)
        if hasattr(task, "gate_info"):
            try:
                out[name].update(task.gate_info())
            except NotImplementedError:
                pass
    return out


def _power(plan: Plan, store: Store) -> list[str]:
    """The dry run's power lines: smallest callable effect per task and the warnings."""
    from modtransfer.core.task import TASKS
    from modtransfer.reports.power import plan_power, power_lines

    ids = {c.cell_id for c in plan.all_cells}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    declared = _declared(plan)
    stored = store.meta().get("tasks") or {}
    for name in declared:
        declared[name] = {**declared[name], **(stored.get(name) or {})}
    tests: dict[str, int] = {}
    for c in plan.all_cells:
        if c.variant != "baseline" and c.seed == plan.seeds[0]:
            tests[c.task] = tests.get(c.task, 0) + 1
    metrics = {t: (TASKS.get(t).primary_metric, TASKS.get(t).higher_is_better) for t in plan.tasks}
    n = plan.looks[-1] if plan.adaptive else len(plan.seeds)
    power = plan_power(plan.tasks, metrics, n, tests, declared, plan.margins, rows)
    return power_lines(power)


def _undecided(plan: Plan, store: Store, look: int) -> set[tuple[str, str, str]]:
    """(variant, task, hparams JSON) pairs whose call is still undecided after ``look`` seeds."""
    from modtransfer.reports.analysis import Settings, compare
    from modtransfer.reports.verdicts import undecided

    keep = set(plan.seeds[:look])
    ids = {c.cell_id for c in plan.all_cells if c.seed in keep}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    settings = Settings.from_meta(store.meta())
    return {(c.variant, c.cond.task, c.cond.hparams_json) for c in compare(rows, settings) if undecided(c.call)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
