"""``modtransfer status``: what a run folder holds, and time estimates from measured speeds.

It only reads: the store is opened read-only, so it works on a run folder this user may not
write, and a damaged store is one line naming ``modtransfer store repair``, not a traceback.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from modtransfer.core.errors import UserError
from modtransfer.run.store import Store


def estimate_seconds(store: Store, cells: list[Any], rows: list[dict[str, Any]] | None = None) -> float | None:
    """Seconds to train ``cells``: per task, the median measured wall time of finished cells.

    ``rows`` are the store's rows when the caller has read them already (one read, not two).
    """
    rows = [r for r in (store.rows() if rows is None else rows) if r["wall_s"]]
    if not rows or not cells:
        return None
    by_task: dict[str, list[float]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r["wall_s"] / max(1, r["steps"] or 1))
    overall = sorted(x for xs in by_task.values() for x in xs)
    fallback = overall[len(overall) // 2]
    total = 0.0
    for c in cells:
        xs = sorted(by_task.get(c.task, [])) or [fallback]
        total += xs[len(xs) // 2] * c.budget.steps
    return total


def summarise(run_dir: Path) -> str:
    """The status lines of a run folder: counts per status, cells left, ETA, problems, claims."""
    run_dir = Path(run_dir)
    store = Store(run_dir / "results.sqlite", readonly=True)
    if not store.exists():
        raise UserError(f"{run_dir} has no results.sqlite; pass a run folder like runs/<benchmark>")
    meta = store.meta()
    plan = meta.get("plan", {}) if isinstance(meta.get("plan"), dict) else {}
    plans = [p for p in meta.get("plans", []) if isinstance(p, dict)] if isinstance(meta.get("plans"), list) else []
    if not plans and plan:
        plans = [plan]
    rows = store.rows()
    counts = Counter(r["status"] for r in rows)
    running = store.running()
    lines = [f"benchmark {plan.get('name', run_dir.name)!r} at {run_dir}"
             + (f" ({len(plans)} plans wrote to this store)" if len(plans) > 1 else "")]
    expected = None
    left: list[Any] = []
    if plans:
        from modtransfer.core.plugins import load_plugin_file
        from modtransfer.run.plan import PLAN_KEYS, load_plan

        ids = {r["cell_id"] for r in rows}
        wanted: dict[str, Any] = {}
        for stored in plans:
            for f in stored.get("plugins", []):
                load_plugin_file(f, strict=False)
            try:  # rebuild the cells from each stored plan (as narrowed by --variants/--tasks/--seeds)
                # a stored plan writes an absent axis as [] ("sizes": []), which a plan file may not say
                p = load_plan({k: v for k, v in stored.items() if k in PLAN_KEYS and v != []}, allow_large=True)
                wanted.update({c.cell_id: c for c in p.cells})
            except UserError as exc:
                lines.append(f"(cannot rebuild the cells of plan {stored.get('name', '?')!r}: {exc})")
        expected = len(wanted)
        left = [c for cid, c in wanted.items() if cid not in ids]
    lines.append(
        f"done {counts['done']}, diverged {counts['diverged']}, failed {counts['failed']}, timeout {counts['timeout']}, "
        f"running {len(running)}" + (f", left {len(left)} of {expected}" if expected is not None else "")
    )
    eta = estimate_seconds(store, left, rows)
    if eta:
        lines.append(f"estimated time left: {eta:.0f} s")
    lines += _config_groups(rows)
    for r in rows:
        if r["status"] != "done":
            first = (r["error"] or "").strip().splitlines()
            lines.append(f"  {r['status']:<8} {r['task']}/{r['variant']}/{r['seed']}"
                         + (f" at step {r['failed_step']}" if r["failed_step"] is not None else "")
                         + (f": {first[0]}" if first else ""))
    for r in running:
        lines.append(f"  running  {r['cell_id']} (pid {r['pid']} on {r['host']})")
    lines += event_lines(rows, store.events())
    return "\n".join(lines)


def event_lines(rows: list[dict[str, Any]], events: dict[str, list[dict[str, Any]]], cells: int = 10,
                per_cell: int = 3) -> list[str]:
    """Counts of the events by kind, then the first ``per_cell`` events of the first ``cells`` cells
    that have any (:mod:`modtransfer.run.events`: why a cell ended as it did)."""
    from modtransfer.run.events import summary

    label = {r["cell_id"]: _label(r) for r in rows}
    flagged = [(cid, evs) for cid, evs in events.items() if evs and cid in label]
    if not flagged:
        return []
    kinds = Counter(e["kind"] for _, evs in flagged for e in evs)
    out = [f"events in {len(flagged)} cell(s): " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))]
    order = {r["cell_id"]: i for i, r in enumerate(rows)}
    for cid, evs in sorted(flagged, key=lambda f: order[f[0]])[:cells]:
        out.append(f"  {label[cid]}: {summary(evs, per_cell)}")
    if len(flagged) > cells:
        out.append(f"  ... and {len(flagged) - cells} more cell(s); the report's 'What happened' section lists them all")
    return out


def _label(row: dict[str, Any]) -> str:
    hp = ",".join(f"{k}={v}" for k, v in sorted((row.get("hparams") or {}).items()))
    return f"{row['task']}/{row['variant']}/{row['seed']}" + (f"[{hp}]" if hp else "")


def _config_groups(rows: list[dict[str, Any]]) -> list[str]:
    """Per task with cells of more than one budget / task configuration: one line per configuration.

    Such cells are never paired with each other; the report analyses each configuration apart.
    """
    import json

    varied: dict[str, set[str]] = {}
    for r in rows:
        varied.setdefault(r["task"], set()).update(r.get("hparams") or {})
    by_task: dict[str, Counter[str]] = {}
    for r in rows:
        budget = dict(r.get("budget") or {})
        for k in varied[r["task"]]:
            budget.pop(k, None)
        key = json.dumps({"budget": budget, "task_config": r.get("task_config") or {}}, sort_keys=True)
        by_task.setdefault(r["task"], Counter())[key] += 1
    out = []
    for task, configs in sorted(by_task.items()):
        if len(configs) < 2:
            continue
        flat = {k: {**{f"{a}": b for a, b in json.loads(k)["budget"].items()},
                    **{f"task.{a}": b for a, b in json.loads(k)["task_config"].items()}} for k in configs}
        keys = sorted({f for d in flat.values() for f in d})
        differ = [f for f in keys if len({json.dumps(d.get(f)) for d in flat.values()}) > 1]
        out.append(f"{task}: cells of {len(configs)} budgets/configurations (never compared with each other):")
        for k, n in configs.most_common():
            out.append("  " + ", ".join(f"{f}={flat[k].get(f)}" for f in differ) + f": {n} cell(s)")
    return out
