"""Writing a results store: a finished cell's row (with its diagnostics and events) in one
transaction, deleting the rows of a status, run-level values. A write that cannot finish is
rolled back: nothing is half-written.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from typing import Any

from modtransfer.run.row import JSON_COLUMNS, STATUSES, sanitise_row
from modtransfer.run.store_claims import patient
from modtransfer.run.store_schema import (
    SIDE_SCHEMA,
    SIDE_TABLES,
    StoreConnection,
    StoreFullError,
    rollback,
    table_names,
)


def finite_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return str(obj)


class StoreWrites(StoreConnection):
    """The write side of :class:`~modtransfer.run.store.Store`."""

    @patient
    def record(self, row: dict[str, Any]) -> bool:
        """Insert a finished cell's row in one transaction; False if the cell was already there.

        A diverged or failed row never carries a primary value, and a non-finite value is never
        stored (a ``done`` row with one becomes ``diverged``). If the row cannot be written
        (disk full, Ctrl-C), the transaction is rolled back: the cell stays unrecorded, so a
        rerun trains it again.
        """
        if row["status"] not in STATUSES:
            raise ValueError(f"bad status {row['status']!r}")
        values = sanitise_row(row)
        side = {k: values.pop(k, None) or [] for k in SIDE_TABLES}
        for col in JSON_COLUMNS:
            values[col] = json.dumps(values.get(col) if values.get(col) is not None else {}, sort_keys=True,
                                     default=json_default)
        values.setdefault("finished_at", time.time())
        cols = ", ".join(values)
        marks = ", ".join(f":{c}" for c in values)
        try:
            with self.connect() as con:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    cur = con.execute(f"INSERT OR IGNORE INTO cells ({cols}) VALUES ({marks})", values)
                    if cur.rowcount == 1:
                        _insert_side(con, row["cell_id"], side)
                    con.execute("DELETE FROM running WHERE cell_id = ?", (row["cell_id"],))
                    con.execute("COMMIT")
                except BaseException:
                    rollback(con)
                    raise
                return cur.rowcount == 1
        except StoreFullError:
            label = "/".join(str(row.get(k)) for k in ("task", "variant", "seed"))
            raise StoreFullError(
                f"the disk holding {self.path} is full: cell {label} ({row['cell_id']}) trained but was not "
                f"recorded; free some space and run the same command again: it trains that cell again "
                f"(cells already recorded are kept)") from None

    @patient
    def delete(self, status: str) -> int:
        """Delete every row of ``status`` (``run --retry-failed``); the number deleted."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for table in set(SIDE_TABLES) & table_names(con):
                    con.execute(f"DELETE FROM {table} WHERE cell_id IN (SELECT cell_id FROM cells WHERE status = ?)",
                                (status,))
                n = con.execute("DELETE FROM cells WHERE status = ?", (status,)).rowcount
                con.execute("COMMIT")
            except BaseException:
                rollback(con)
                raise
            return n

    @patient
    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (the plan, the skipped pairs)."""
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=json_default)))


def _insert_side(con: sqlite3.Connection, cell_id: str, side: dict[str, list[dict[str, Any]]]) -> None:
    """A row's diagnostics and events into their tables (inside the row's transaction)."""
    values: dict[str, list[tuple[Any, ...]]] = {
        "diagnostics": [(cell_id, int(d["step"]), str(d["name"]), str(d.get("layer") or ""), finite_or_none(d.get("value")))
                        for d in side["diagnostics"]],
        "events": [(cell_id, i, str(e["kind"]), e.get("step"), e.get("layer"), str(e.get("detail") or ""))
                   for i, e in enumerate(side["events"])],
    }
    for table, rows in values.items():
        if rows:
            con.execute(SIDE_SCHEMA[table])
            con.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
