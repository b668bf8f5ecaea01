"""``modtransfer run PLAN.yaml``: check the plan and the environment, then train the cells not yet
in the run folder's store (in rounds when seeds are adaptive), or only list them (``--dry-run``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.cli.environment import check_device, check_wandb_online, check_writable_dir, load_plugins
from modtransfer.cli.results import write_report
from modtransfer.core.errors import UserError
from modtransfer.run.envinfo import portable_path

if TYPE_CHECKING:
    from modtransfer.run.layout import Layout
    from modtransfer.run.plan_types import Plan
    from modtransfer.run.store import Store


def run_command(args: argparse.Namespace) -> int:
    plugins = [str(Path(p).resolve()) for p in load_plugins(args, strict=True)]
    from modtransfer.run.runner import resolve_layout
    from modtransfer.run.store import Store

    plan = _plan(args)
    executor = args.executor or plan.executor
    workers, threads = _workers_threads(args, plan, executor)
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
    layout = resolve_layout(executor, todo, workers=workers, threads=threads, device=args.device, stack=plan.stack)
    if args.dry_run:
        # the time to a verdict is projected with the layout the plan's whole set of cells gets
        ahead = resolve_layout(executor, plan.all_cells, workers=workers, threads=threads, device=args.device,
                               stack=plan.stack)
        return _dry_run(plan, store, run_dir, done, todo, executor, (layout, ahead), args.device)

    cache = os.environ.get("MODTRANSFER_CACHE")
    # prepare every task's data before anything trains (a fetch problem is a user error, exit 2)
    from modtransfer.core.task import TASKS

    for tname in plan.tasks:
        if any(c.task == tname for c in todo):
            TASKS.get(tname)(plan.task_config.get(tname, {}), cache).prepare()

    task_info = _task_info(plan, cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    from modtransfer.run.tmp_folders import clean_stale_tmp, run_tmp

    clean_stale_tmp(run_dir)  # temporary files left by killed runs of this folder
    with run_tmp(run_dir):    # before anything imports W&B, which makes temporary folders at import
        return _train(args, plan, store, run_dir, todo, task_info, plugins, executor, layout, cache)


def _plan(args: argparse.Namespace) -> Plan:
    """The plan with the command line's selection, checked against the device and the contract gate."""
    from modtransfer.run.plan import load_plan

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
    return plan


def _workers_threads(args: argparse.Namespace, plan: Plan, executor: str) -> tuple[int | None, int | None]:
    """``--workers`` and ``--threads`` (None: auto), checked against the executor."""
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
    return workers, threads


def _dry_run(plan: Plan, store: Store, run_dir: Path, done: set[str], todo: list, executor: str,
             layouts: tuple[Layout, Layout], device: str) -> int:
    """Print the cells (done, to train, skipped), the time left, the layout (now, and for the whole
    plan: ``layouts``), which cells stack, the power lines and the time to a verdict per task
    (:mod:`modtransfer.cli.projection`)."""
    layout, ahead = layouts
    from modtransfer.run.status import estimate_seconds

    print(f"plan {plan.name!r}: {len(plan.cells)} cells ({_factors(plan)}); {parts_text(plan, device)}; "
          f"run folder {run_dir}")
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
    from modtransfer.run.stacking import describe_stacking

    for line in describe_stacking(todo or plan.cells, plan.stack, device=device):
        print(line)
    for line in _power(plan, store):
        print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
    from modtransfer.cli.projection import projection_lines

    for line in projection_lines(plan, store, ahead):
        print(line)
    return 0


def parts_text(plan: Plan, device: str) -> str:
    """What every part of a plan runs on: its size(s), implementation(s) and precision (as resolved here)."""
    import torch

    from modtransfer.core.precision import resolve_precision

    accel = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    sizes, impls = plan.sizes or [plan.size], plan.implementations
    precision = resolve_precision(plan.precision, accel)
    how = f"{'auto, ' if plan.precision == 'auto' else ''}on {accel.split(':')[0]}"
    return (f"{'sizes' if len(sizes) > 1 else 'size'} {', '.join(sizes)}, "
            f"{'implementations' if len(impls) > 1 else 'implementation'} {', '.join(impls)}"
            f"{' (every size on each)' if len(sizes) > 1 and len(impls) > 1 else ''}, "
            f"precision {precision} ({how}{', every part' if len(sizes) * len(impls) > 1 else ''})")


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
    from modtransfer.cli.progress import Progress
    from modtransfer.cli.run_table import print_table, results_table
    from modtransfer.run.runner import execute

    _store_plan(store, {**plan.to_dict(), "source": portable_path(args.plan),
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
            write_report(run_dir, None, False)
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


def _store_plan(store: Store, plan: dict) -> None:
    """Keep every plan that wrote to a store (``plans``, oldest first); ``plan`` is the latest."""
    import json

    meta = store.meta()
    kept = meta.get("plans")
    plans: list[Any] = kept if isinstance(kept, list) else []
    if not plans and isinstance(meta.get("plan"), dict):
        plans = [meta["plan"]]
    same = [p for p in plans if json.dumps(p, sort_keys=True, default=str) == json.dumps(plan, sort_keys=True, default=str)]
    if not same:
        plans.append(plan)
    store.set_meta("plans", plans)
    store.set_meta("plan", plan)


def _declared(plan: Plan) -> dict[str, dict]:
    """What each task of the plan declares for the statistics (margin, seed noise) for the metric it
    decides on (the plan's ``decide_on`` included: the task is built with the plan's options), without
    touching data."""
    out = {}
    for name, task in _tasks(plan).items():
        out[name] = {k: getattr(task, k) for k in ("margin", "noise_sd", "trivial_name") if hasattr(task, k)}
    return out


def _tasks(plan: Plan) -> dict[str, Any]:
    """The plan's tasks, built with its task options (no data prepared)."""
    from modtransfer.core.task import TASKS

    return {name: TASKS.get(name)(plan.task_config.get(name, {}), None) for name in plan.tasks}


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
    from modtransfer.reports.power import plan_power, power_lines

    ids = {c.cell_id for c in plan.all_cells}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    declared = _declared(plan)
    stored = store.meta().get("tasks") or {}
    for name in declared:
        declared[name] = {**declared[name], **(stored.get(name) or {})}
    tests: dict[str, int] = {}
    trials = plan.tuning.index() if plan.tuning is not None else {}   # tuning trials make no main call
    for c in plan.all_cells:
        if c.variant != "baseline" and c.seed == plan.seeds[0] and json.dumps(c.hparams, sort_keys=True) not in trials:
            tests[c.task] = tests.get(c.task, 0) + 1
    metrics = {t: (task.primary_metric, task.higher_is_better) for t, task in _tasks(plan).items()}
    n = plan.looks[-1] if plan.adaptive else len(plan.seeds)
    power = plan_power(plan.tasks, metrics, n, tests, declared, plan.margins, rows)
    return power_lines(power)


def _factors(plan: Plan) -> str:
    """The axes the cells cross, each with its count (sizes and implementations when the plan has those axes,
    settings = hyper-parameter rows plus tuning trials), and the pairs left out as not applicable."""
    from modtransfer.run.hparams import hparam_rows

    seeds = (f"adaptive seeds (looks at {'/'.join(map(str, plan.looks))})" if plan.adaptive
             else f"{len(plan.seeds)} seeds")
    parts = [f"{len(plan.variants)} variants", f"{len(plan.tasks)} tasks", seeds]
    settings = len(hparam_rows(plan.hparams)) + (len(plan.tuning.points()) if plan.tuning is not None else 0)
    if settings > 1:
        parts.append(f"{settings} settings" + (" (incl. tuning trials)" if plan.tuning is not None else ""))
    if len(plan.sizes) > 1:
        parts.append(f"{len(plan.sizes)} sizes")
    if len(plan.implementations) > 1:
        parts.append(f"{len(plan.implementations)} implementations")
    skipped = f", less {len(plan.skipped)} variant x task pair(s) that cannot run" if plan.skipped else ""
    return " x ".join(parts) + skipped


def _undecided(plan: Plan, store: Store, look: int) -> set[tuple[str, str, str]]:
    """(variant, task, hparams JSON) pairs whose call is still undecided after ``look`` seeds."""
    from modtransfer.reports.analysis import compare
    from modtransfer.reports.records import Settings
    from modtransfer.reports.verdicts import undecided

    keep = set(plan.seeds[:look])
    ids = {c.cell_id for c in plan.all_cells if c.seed in keep}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    settings = Settings.from_meta(store.meta())
    return {(c.variant, c.cond.task, c.cond.hparams_json) for c in compare(rows, settings) if undecided(c.call)}
