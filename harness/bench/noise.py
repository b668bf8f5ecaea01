"""Where the baseline's seed noise comes from: ``modtransfer bench noise TASK``.

    modtransfer bench noise TASK [--seeds 8] [--size tiny] [--implementation modtransfer]
                                 [--plan PLAN.yaml] [--steps N] [--variants gelu,swish,rmsnorm]
                                 [--threads 1] [--device cpu] [--no-record]

A cell of seed ``s`` draws four things from ``s``: the initial weights (``seed_everything(s)``,
then the model is built), the order and content of its training batches
(``task.train_batches(s)``), the dropout masks (the global generator as building left it) and,
where the task's held-out set depends on the seed, the evaluation sample
(``task.val_batches(s)``). Here each source varies over ``--seeds`` seeds while the others stay
at the first seed, and the SD of the primary metric is reported per source beside the SD of
ordinary cells (every source varying). The evaluation sample is measured on the reference model
(every source at the first seed) scored on each seed's held-out set; a task whose held-out set
is the same for every seed still has evaluation noise (which verses or windows a model happens
to get right): it is estimated by split halves, the SD over the initialisation-varied models
of (metric on the even batches - metric on the odd batches) / 2. Dropout is "none" when the
spec's dropout is 0. Then a few variants that keep the baseline's shapes train on the same
seeds, and the table gives the SD of their paired differences, its ratio to the baseline's
seed SD (sqrt(2) ~ 1.41 means the arms of a pair share no noise) and the correlation of the
arms.

Training reuses :mod:`modtransfer.run.training` as :func:`modtransfer.run.cell.run_cell` does
(``make_module``, ``make_trainer``, ``make_datamodule``: the same LightningModule, optimiser,
schedule, clipping, precision and divergence stop), without W&B, the diagnostics callbacks and
periodic evaluation, which observe training without changing it. With every source at ``s`` a
run is the cell of seed ``s`` (a test checks the primary value against ``run_cell``). A
dropout seed other than the initialisation seed reseeds the global generator after building
(``torch.manual_seed(DROPOUT_STREAM + seed)``).

The result is written as a record (:mod:`modtransfer.run.noise_records`) under ``$MODTRANSFER_CACHE/noise``,
keyed by the task configuration, budget, size, implementation and spec, where ``run --dry-run``
of a plan at the same budget finds it. ``--steps`` shortens the budget for a quick look: the
record then matches only plans at that number of steps, and the output says which budget it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modtransfer.core.errors import UserError

if TYPE_CHECKING:
    from modtransfer.core.model import Transformer
    from modtransfer.core.task import Task
    from modtransfer.run.plan_types import Cell

#: offset of the dropout streams' seeds, away from the seeds that build models
DROPOUT_STREAM = 7_919_000
DEFAULT_VARIANTS = "gelu,swish,rmsnorm"
SOURCES = ("initialisation", "data order", "dropout", "evaluation sample")


@dataclass(frozen=True)
class Member:
    """The seeds of one training run, one per source of noise."""

    init: int
    data: int
    dropout: int
    eval: int

    def label(self) -> str:
        return f"init={self.init} data={self.data} dropout={self.dropout} eval={self.eval}"


def train_member(cell: Cell, task: Task, member: Member, accel: str = "cpu") -> Any:
    """Train ``cell`` with ``member``'s seeds; returns the fitted :class:`~modtransfer.run.training.CellModule`."""
    import torch

    from modtransfer.core.model import build
    from modtransfer.run.training import lightning_api, make_datamodule, make_module, make_trainer

    budget = cell.budget.replace(eval_every=0)
    cell = dataclasses.replace(cell, budget=budget)
    spec = task.configure_spec(cell.spec)
    lightning_api().seed_everything(member.init, workers=False, verbose=False)
    model = build(spec, task.topology, seed=member.init)  # as run_cell: draws by place (core.draws)
    if member.dropout != member.init:
        torch.manual_seed(DROPOUT_STREAM + member.dropout)
    log_every = max(1, min(25, budget.steps // 10 or 1))  # as run_cell: when the divergence watch is read
    module = make_module(model, task, cell, [], log_every, time.perf_counter())
    trainer = make_trainer(budget, accel, None, log_every, callbacks=[], precision=cell.precision)
    trainer.fit(module, datamodule=make_datamodule(task, member.data, budget.batch_size))
    module.flush(trainer.global_step, final=True)
    return module


def score(task: Task, model: Transformer, batches: list[Any]) -> float:
    """The primary metric of ``model`` on ``batches`` (eval mode, no gradients); NaN when not finite."""
    import torch

    device = next(model.parameters()).device
    moved = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    was = model.training
    model.eval()
    with torch.no_grad():
        value = float(task.evaluate(model, moved)[task.primary_metric])
    model.train(was)
    return value if math.isfinite(value) else math.nan


def _same(a: list[Any], b: list[Any]) -> bool:
    """Whether two lists of batches hold equal tensors (a held-out set that ignores the seed)."""
    import torch

    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for k, v in x.items():
            w = y[k]
            same = (isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor) and v.shape == w.shape
                    and bool(torch.equal(v, w))) or (not isinstance(v, torch.Tensor) and v == w)
            if not same:
                return False
    return True


class Bench:
    """The runs of one measurement, each trained once (the reference run serves every source)."""

    def __init__(self, cells: dict[str, Any], task: Task, seeds: list[int], accel: str) -> None:
        self.cells, self.task, self.seeds, self.accel = cells, task, seeds, accel
        self.ref = seeds[0]
        budget = cells["baseline"].budget
        self._val: dict[int, list[Any]] = {}
        self.val_depends_on_seed = not _same(self.val(self.ref), self.val(self.ref + 1))
        self.results: dict[tuple[str, Member], dict[str, Any]] = {}
        self.dropout = cells["baseline"].spec.dropout > 0 and bool(cells["baseline"].spec.dropout_at)
        self.steps = budget.steps

    def val(self, seed: int) -> list[Any]:
        if seed not in self._val:
            b = self.cells["baseline"].budget
            self._val[seed] = self.task.val_batches(seed, b.batch_size, b.eval_batches)
        return self._val[seed]

    def jobs(self, seed: int) -> list[tuple[str, Member]]:
        """(variant, member) for one seed: every source of that seed, then the variants' paired runs."""
        out = [("baseline", m) for m in self.members(seed)]
        return out + [(v, Member(seed, seed, seed, seed)) for v in self.cells if v != "baseline"]

    def members(self, seed: int) -> list[Member]:
        """The baseline's runs for ``seed``: all sources at ``seed``, then one source at a time."""
        r = self.ref
        out = [Member(seed, seed, seed, seed), Member(seed, r, r, r), Member(r, seed, r, r)]
        return out + ([Member(r, r, seed, r)] if self.dropout else [])

    def group(self, role: str) -> list[Member]:
        """The members that vary ``role`` (all, init, data, dropout) over the seeds."""
        index = {"all": 0, "init": 1, "data": 2, "dropout": 3}[role]
        return [self.members(s)[index] for s in self.seeds]

    def run(self, variant: str, member: Member) -> dict[str, Any]:
        """Train and score one run (once: the reference run serves every source)."""
        key = (variant, member)
        if key in self.results:
            return self.results[key]
        started = time.perf_counter()
        module = train_member(self.cells[variant], self.task, member, self.accel)
        res: dict[str, Any] = {"status": module.status, "value": math.nan}
        r = self.ref
        if module.status == "done":
            model = module.model
            batches = self.val(member.eval)
            res["value"] = score(self.task, model, batches)
            in_init_group = variant == "baseline" and (member.data, member.dropout, member.eval) == (r, r, r)
            if in_init_group and not self.val_depends_on_seed and len(batches) >= 2:
                res["halves"] = (score(self.task, model, batches[0::2]), score(self.task, model, batches[1::2]))
            if in_init_group and member.init == r and self.val_depends_on_seed:
                res["eval_values"] = [score(self.task, model, self.val(s)) for s in self.seeds]
        res["wall_s"] = time.perf_counter() - started
        self.results[key] = res
        return res

    def measure(self, progress: Any = None) -> None:
        """Every run, seed by seed (a drift in machine load falls on every source alike)."""
        todo = list(dict.fromkeys(j for s in self.seeds for j in self.jobs(s)))
        for i, (variant, member) in enumerate(todo, 1):
            res = self.run(variant, member)
            if progress is not None:
                progress(f"[{i}/{len(todo)}] {self.task.name}/{variant} {member.label()}: "
                         f"{self.task.primary_metric} {res['value']:.4g} ({res['status']}, {res['wall_s']:.1f} s)")

    def values(self, variant: str, members: list[Member]) -> list[float]:
        return [self.results[(variant, m)]["value"] for m in members]


def _sd(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.stdev(vals) if len(vals) >= 2 else math.nan


def _num(x: float) -> float | None:
    return x if isinstance(x, float | int) and math.isfinite(x) else None


def components(bench: Bench) -> dict[str, dict[str, Any]]:
    """Source -> ``{"sd", "n", "note"}``: the SD of the primary metric with that source alone varying."""
    n = len(bench.seeds)
    r = bench.ref
    out: dict[str, dict[str, Any]] = {"initialisation": {"sd": _sd(bench.values("baseline", bench.group("init"))), "n": n,
                              "note": f"init seed varies; data, dropout, evaluation at seed {r}"},
           "data order": {"sd": _sd(bench.values("baseline", bench.group("data"))), "n": n,
                          "note": f"training-batch seed varies; init, dropout, evaluation at seed {r}"}}
    if bench.dropout:
        out["dropout"] = {"sd": _sd(bench.values("baseline", bench.group("dropout"))), "n": n,
                          "note": f"dropout stream varies; init, data, evaluation at seed {r}"}
    else:
        out["dropout"] = {"sd": None, "n": 0, "note": "none: dropout 0"}
    ref = bench.results[("baseline", Member(r, r, r, r))]
    if bench.val_depends_on_seed:
        vals = ref.get("eval_values") or []
        out["evaluation sample"] = {"sd": _sd(vals), "n": len(vals),
                                    "note": f"the seed-{r} model scored on each seed's held-out set"}
    else:
        halves = [bench.results[("baseline", m)].get("halves") for m in bench.group("init")]
        diffs = [a - b for a, b in (h for h in halves if h)]
        out["evaluation sample"] = {"sd": _sd(diffs) / 2 if len(diffs) >= 2 else math.nan, "n": len(diffs),
                                    "note": "held-out set fixed for every seed: split halves (even - odd "
                                            "batches) / 2 over the init-varied models"}
    for c in out.values():
        c["sd"] = _num(c["sd"]) if c["sd"] is not None else None
    return out


def pairs(bench: Bench) -> dict[str, dict[str, Any]]:
    """Variant -> the SD of its paired differences with the baseline, their correlation and mean."""
    base = bench.values("baseline", bench.group("all"))
    out = {}
    for v in bench.cells:
        if v == "baseline":
            continue
        both = [(b, x) for b, x in zip(base, bench.values(v, bench.group("all")), strict=True)
                if math.isfinite(b) and math.isfinite(x)]
        diffs = [x - b for b, x in both]
        corr = math.nan
        if len(both) >= 3:
            try:
                corr = statistics.correlation([b for b, _ in both], [x for _, x in both])
            except statistics.StatisticsError:  # a constant arm
                pass
        out[v] = {"diff_sd": _num(_sd(diffs)), "corr": _num(corr), "n": len(both),
                  "mean_diff": _num(statistics.fmean(diffs)) if diffs else None}
    return out


def summarise(bench: Bench) -> dict[str, Any]:
    """The record's measured part: seed SD, components, pairs, seconds per cell."""
    all_runs = [bench.results[("baseline", m)] for m in bench.group("all")]
    values = [r["value"] for r in all_runs]
    pr = pairs(bench)
    diffs = [p["diff_sd"] for p in pr.values() if p["diff_sd"] is not None]
    not_done = sum(1 for r in bench.results.values() if r["status"] != "done")
    return {"seeds": len(bench.seeds), "seed_sd": _num(_sd(values)),
            "seed_mean": _num(statistics.fmean([v for v in values if math.isfinite(v)]))
            if any(math.isfinite(v) for v in values) else None,
            "components": components(bench), "pairs": pr,
            "paired_diff_sd": statistics.median(diffs) if diffs else None,
            "seconds_per_cell": statistics.median(r["wall_s"] for r in all_runs),
            "runs": len(bench.results), "runs_not_done": not_done}


def _f(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def format_table(record: dict[str, Any]) -> str:
    """The printed result: the sources of the seed SD, then the pairs."""
    total = record["seed_sd"]
    lines = [f"bench noise: {record['task']}, baseline {record['implementation']!r} at size {record['size']}, "
             f"{record['seeds']} seeds per source; metric {record['metric']} "
             f"({'higher' if record['higher_is_better'] else 'lower'} is better)",
             f"budget measured: {record['budget_label']}",
             f"seconds per baseline run (median): {record['seconds_per_cell']:.1f}",
             "", "| source of noise | SD | share of the seed variance | how |", "|---|---|---|---|",
             f"| all sources (ordinary cells) | {_f(total)} | 100% | every source at seed s |"]
    parts = 0.0
    for name in SOURCES:
        c = record["components"][name]
        share = (c["sd"] ** 2 / total ** 2) if c["sd"] is not None and total else None
        parts += share or 0.0
        lines.append(f"| {name} | {_f(c['sd'])} | {_f(share, '.0%') if share is not None else '-'} | {c['note']} |")
    err = 1 / math.sqrt(2 * max(1, record["seeds"] - 1))
    lines.append(f"| sum of the sources | | {parts:.0%} | off 100% by interactions and by the sampling error of "
                 f"{record['seeds']}-seed SDs (about +-{err:.0%} each) |")
    if record["pairs"]:
        lines += ["", "| variant | paired-difference SD | / baseline seed SD | correlation of the arms | "
                      "mean difference | pairs |", "|---|---|---|---|---|---|"]
        for v, p in record["pairs"].items():
            ratio = p["diff_sd"] / total if p["diff_sd"] is not None and total else None
            lines.append(f"| {v} | {_f(p['diff_sd'])} | {_f(ratio, '.2f')} | {_f(p['corr'], '.2f')} | "
                         f"{_f(p['mean_diff'], '+.3g')} | {p['n']} |")
        lines.append("(/ baseline seed SD: 1.41 when the arms of a pair share no noise, 0 when they share it all)")
    if record.get("runs_not_done"):
        lines.append(f"warning: {record['runs_not_done']} of {record['runs']} runs did not finish (diverged or "
                     "timed out); they are left out of the SDs")
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="modtransfer bench noise", description=__doc__.splitlines()[0])
    ap.add_argument("task", help="task name, e.g. regression")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per source of noise (default 8)")
    ap.add_argument("--size", help="size preset (default tiny; with --plan, the plan's)")
    ap.add_argument("--implementation", help="baseline implementation (default modtransfer; with --plan, the plan's)")
    ap.add_argument("--plan", help="measure at this plan's budget, task configuration, size and spec")
    ap.add_argument("--steps", type=int, help="shorten the budget to N steps (a quick look; its record matches "
                                              "only plans at N steps)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"paired variants that keep the baseline's shapes "
                                                                 f"(default {DEFAULT_VARIANTS}; '' for none)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a cell)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--no-record", action="store_true", help="print only; write no noise record")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        raise UserError(f"--seeds must be >= 2 to give an SD, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.plan and (args.size or args.implementation):
        raise UserError("--plan sets the size and the implementation; leave out --size and --implementation")
    return args


def load_cells(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """(variant -> the cell it trains, at the first seed; the budget's description)."""
    from modtransfer.run.noise_records import primary_cells
    from modtransfer.run.plan import load_plan

    source: Any = args.plan or {"name": "bench-noise", "size": args.size or "tiny", "wandb": {"mode": "disabled"},
                                "implementation": args.implementation or "modtransfer"}
    plan = load_plan(source, variants=args.variants, tasks=args.task, seeds=1)
    if plan.tasks != [args.task]:
        raise UserError(f"bench noise measures one task; {args.task!r} selects {', '.join(plan.tasks)}")
    cells = {c.variant: c for c in primary_cells(plan, args.task)}
    for s in plan.skipped:
        print(f"skip {s['variant']}: {s['reason']}", file=sys.stderr)
    b = cells["baseline"].budget
    label = f"plan {plan.name!r}'s budget" if args.plan else "the task's default budget"
    if args.steps is not None and args.steps != b.steps:
        cells = {v: dataclasses.replace(c, budget=c.budget.replace(steps=args.steps)) for v, c in cells.items()}
        label += f", shortened by --steps to {args.steps} steps (not {b.steps}: a quick look)"
        b = cells["baseline"].budget
    label += f": {b.steps} steps x batch {b.batch_size}, lr {b.lr:g} {b.schedule}, {b.eval_batches} eval batches"
    return cells, label


def main(argv: list[str] | None = None) -> int:
    import torch

    from modtransfer.core.task import TASKS
    from modtransfer.run.noise_records import cell_noise_key, noise_identity, write_noise

    args = _args(argv)
    cells, label = load_cells(args)
    torch.set_num_threads(args.threads)
    accel = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    base = cells["baseline"]
    task = TASKS.get(base.task)(base.task_config, None)
    task.prepare()
    started = time.perf_counter()
    bench = Bench(cells, task, list(range(args.seeds)), accel)
    bench.measure(progress=lambda line: print(line, file=sys.stderr, flush=True))
    record = {"task": base.task, "key": cell_noise_key(base), "metric": task.primary_metric,
              "higher_is_better": bool(task.higher_is_better), "budget_label": label,
              **{k: v for k, v in noise_identity(base).items() if k != "task"}, **summarise(bench),
              "threads": args.threads, "device": accel, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "bench_wall_s": time.perf_counter() - started}
    print(format_table(record))
    print(f"{record['runs']} runs in {record['bench_wall_s']:.0f} s")
    if not args.no_record:
        print(f"noise record: {write_noise(record)} (run --dry-run of a plan at this budget uses it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
