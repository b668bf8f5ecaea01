"""The result of one cell: :class:`Row`, which is also the results store's schema.

Every field but the side lists is a column of the store's ``cells`` table, declared once here
with its SQL type and meaning; :mod:`modtransfer.run.store` builds its ``CREATE TABLE`` and its
column list from these fields, so a new result field is one line in this file. ``diagnostics``
and ``events`` go to tables of their own (one entry per step and measure, one per event).
Rows travel between processes and into reports as plain dicts (:meth:`Row.to_dict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from modtransfer.run.plan_types import Cell

STATUSES = ("done", "diverged", "failed", "timeout")
#: statuses whose row may carry a primary value (a diverged or failed cell never does)
VALUED_STATUSES = ("done", "timeout")


def _col(sql: str, note: str = "", default: Any = None, factory: Any = None, json: bool = False) -> Any:
    """A store column: its SQL declaration, a comment for the schema, and whether it is stored as JSON."""
    meta = {"sql": sql, "note": note, "json": json}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _side() -> Any:
    return field(default_factory=list, metadata={"side": True})


@dataclass
class Row:
    """One finished cell: identity, outcome, costs and provenance (one SQLite row, one transaction)."""

    cell_id: str = _col("TEXT PRIMARY KEY", default="")
    benchmark: str = _col("TEXT NOT NULL", default="")
    variant: str = _col("TEXT NOT NULL", default="")
    task: str = _col("TEXT NOT NULL", default="")
    seed: int = _col("INTEGER NOT NULL", default=0)
    size: str = _col("TEXT NOT NULL", default="")
    hparams: dict[str, Any] = _col("TEXT NOT NULL", "JSON: hyper-parameter axis values of this cell ({} if none)",
                                   factory=dict, json=True)
    status: str = _col(f"TEXT NOT NULL CHECK (status IN ({', '.join(repr(s) for s in STATUSES)}))", default="failed")
    primary_metric: str = _col("TEXT NOT NULL", default="")
    higher_is_better: int = _col("INTEGER NOT NULL", default=0)
    primary_value: float | None = _col("REAL", "NULL unless the cell produced a finite final evaluation")
    metrics: dict[str, Any] = _col("TEXT NOT NULL", "JSON: all final metrics", factory=dict, json=True)
    curve: list[dict[str, Any]] = _col("TEXT NOT NULL", 'JSON: [{"step": s, "train_loss": x, <val metrics>...}, ...]',
                                       factory=list, json=True)
    params: int | None = _col("INTEGER")
    flops_per_token: float | None = _col("REAL")
    tokens_per_s: float | None = _col("REAL")
    mfu: float | None = _col("REAL", "model-FLOP utilisation: 3 x FLOPs/token x tokens/s / matmul peak")
    train_s: float | None = _col("REAL", "seconds inside the training loop")
    wall_s: float | None = _col("REAL", "seconds from cell start to row")
    startup_s: float | None = _col("REAL", "seconds from cell start to the first training step")
    steps: int | None = _col("INTEGER", default=0)
    failed_step: int | None = _col("INTEGER", "step of divergence / timeout")
    error: str | None = _col("TEXT", "traceback or reason")
    spec: dict[str, Any] = _col("TEXT NOT NULL", "JSON: the resolved ModelSpec", factory=dict, json=True)
    task_config: dict[str, Any] = _col("TEXT NOT NULL", "JSON", factory=dict, json=True)
    budget: dict[str, Any] = _col("TEXT NOT NULL", "JSON", factory=dict, json=True)
    env: dict[str, Any] = _col("TEXT NOT NULL", "JSON: versions, git commit, device, host", factory=dict, json=True)
    wandb_dir: str | None = _col("TEXT")
    finished_at: float | None = _col("REAL NOT NULL", "set by the store when the row is written")
    diagnostics: list[dict[str, Any]] = _side()
    events: list[dict[str, Any]] = _side()

    @classmethod
    def for_cell(cls, cell: Cell, **values: Any) -> Row:
        """A ``failed`` row of ``cell`` (identity, spec, config and budget filled in), updated with ``values``."""
        return cls(cell_id=cell.cell_id, benchmark=cell.benchmark, variant=cell.variant, task=cell.task,
                   seed=cell.seed, size=cell.size, hparams=cell.hparams, spec=cell.spec.to_dict(),
                   task_config=cell.task_config, budget=cell.budget.to_dict(), **values)

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            if key not in ROW_FIELDS:
                raise KeyError(f"{key!r} is not a field of Row")
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """The row as the plain dict the store, the workers' pipes and the reports pass around."""
        out = asdict(self)
        if out["finished_at"] is None:
            del out["finished_at"]
        return out


ROW_FIELDS = frozenset(f.name for f in fields(Row))
#: the ``cells`` table's columns, in order
COLUMNS = tuple(f.name for f in fields(Row) if not f.metadata.get("side"))
#: columns stored as JSON text
JSON_COLUMNS = tuple(f.name for f in fields(Row) if f.metadata.get("json"))
#: row keys stored in tables of their own, not as columns of ``cells``
SIDE_FIELDS = tuple(f.name for f in fields(Row) if f.metadata.get("side"))


def cells_table_sql() -> str:
    """``CREATE TABLE cells`` from the fields of :class:`Row`."""
    width = max(len(c) for c in COLUMNS) + 1
    lines = []
    for i, f in enumerate(f for f in fields(Row) if not f.metadata.get("side")):
        decl = f"    {f.name.ljust(width)}{f.metadata['sql']}{',' if i < len(COLUMNS) - 1 else ''}"
        if f.metadata["note"]:
            decl = f"{decl.ljust(40)} -- {f.metadata['note']}"
        lines.append(decl)
    return "CREATE TABLE IF NOT EXISTS cells (\n" + "\n".join(lines) + "\n);"


def sanitise_row(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``row`` that cannot put a wrong value into a mean.

    A non-finite primary value is dropped (and a ``done`` row carrying one becomes
    ``diverged``); a diverged or failed row never keeps a primary value.
    """
    out = dict(row)
    value = out.get("primary_value")
    if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
        out["primary_value"] = None
        if out["status"] == "done":
            out["status"] = "diverged"
            out["error"] = out.get("error") or f"final {out.get('primary_metric') or 'metric'} is not finite"
    if out["status"] not in VALUED_STATUSES:
        out["primary_value"] = None
    return out
