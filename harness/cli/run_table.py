"""The table the run command prints at its end: variants (one row per hyper-parameter setting) x
tasks, mean ± SD of the primary metric over the seeds recorded in the store."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Plan
    from modtransfer.run.store import Store


def results_table(plan: Plan, store: Store) -> tuple[list[str], list[list[str]]]:
    """Variants (one row per hyper-parameter setting) x tasks: mean ± SD of the primary metric over seeds."""
    ids = {c.cell_id for c in plan.all_cells}
    rows = [r for r in store.rows() if r["cell_id"] in ids]
    def setting(hp: dict[str, Any], impl: str) -> str:
        return json.dumps({**hp, **({"implementation": impl} if len(plan.implementations) > 1 else {})},
                          sort_keys=True)

    by: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        impl = (r.get("spec") or {}).get("implementation", "modtransfer")
        by.setdefault((r["variant"], setting(r.get("hparams") or {}, impl), r["task"]), []).append(r)
    metric = {t: next((r["primary_metric"] + (" ^" if r["higher_is_better"] else " v")
                       for r in rows if r["task"] == t), t) for t in plan.tasks}
    header = ["variant"] + [f"{t} {metric[t]}" for t in plan.tasks]
    settings = list(dict.fromkeys(setting(c.hparams, c.spec.implementation) for c in plan.all_cells)) or ["{}"]
    body = []
    for v in plan.variants:
        for hp in settings:
            hp_dict = json.loads(hp)
            label = v + (" [" + ", ".join(f"{k}={x}" for k, x in sorted(hp_dict.items())) + "]" if hp_dict else "")
            line = [label]
            for t in plan.tasks:
                line.append(_table_cell(plan, by.get((v, hp, t), []), v, t))
            body.append(line)
    return header, body


def _table_cell(plan: Plan, rs: list[dict[str, Any]], variant: str, task: str) -> str:
    vals = [r["primary_value"] for r in rs if r["status"] == "done" and r["primary_value"] is not None]
    if not rs:
        skip = next((s for s in plan.skipped if s["variant"] == variant and s["task"] == task), None)
        return "n/a" if skip else "-"
    if not vals:
        return ", ".join(sorted({r["status"] for r in rs}))
    mean = sum(vals) / len(vals)
    text = f"{mean:.4f}"
    if len(vals) > 1:
        sd = (sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)) ** 0.5
        text += f" ± {sd:.4f} (n={len(vals)})"
    bad = Counter(r["status"] for r in rs if r["status"] != "done")
    if bad:
        text += " (" + ", ".join(f"{n} {s}" for s, n in bad.items()) + ")"
    return text


def print_table(header: list[str], body: list[list[str]], stream: Any = None) -> None:
    stream = stream or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(show_lines=False)
        for h in header:
            table.add_column(Text(h))
        for row in body:
            table.add_row(*(Text(x) for x in row))  # plain text: "[lr=0.01]" is not rich markup
        Console(file=stream, width=max(100, sum(len(h) for h in header) + 20)).print(table)
    except ImportError:  # pragma: no cover
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
        for row in [header, *body]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)), file=stream)
