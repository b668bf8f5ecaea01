"""Reading a results store: recorded cells (JSON columns decoded), their diagnostics and events,
the run-level values. Every read opens the file read-only and never changes it; a missing or
empty file reads as an empty store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modtransfer.run.row import JSON_COLUMNS
from modtransfer.run.store_claims import patient
from modtransfer.run.store_schema import CorruptStoreError, StoreConnection, repair_hint, table_names


def loads_json(text: str, path: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise CorruptStoreError(f"the results store {path} holds undecodable JSON in {what}; "
                                f"drop that row and keep the rest with: {repair_hint(path)}") from None


def json_cells(con: sqlite3.Connection) -> Iterator[tuple[str, sqlite3.Row]]:
    if "cells" not in table_names(con):
        return
    for row in con.execute(f"SELECT cell_id, {', '.join(JSON_COLUMNS)} FROM cells"):
        for col in JSON_COLUMNS:
            yield col, row



class StoreReads(StoreConnection):
    """The read side of :class:`~modtransfer.run.store.Store`."""

    # -- reads ----------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store file exists (it may still be empty)."""
        return self.path.is_file()

    @patient
    def check(self) -> None:
        """Raise :class:`CorruptStoreError` now if the store is damaged (a no-op when it is missing)."""
        if self._readable():
            with self._reader() as con:
                for col, row in json_cells(con):
                    loads_json(row[col], self.path, f"column {col} of cell {row['cell_id']}")

    @patient
    def done_ids(self) -> set[str]:
        """Ids of every recorded cell, whatever its status."""
        if not self._readable():
            return set()
        with self._reader() as con:
            if "cells" not in table_names(con):
                return set()
            return {r[0] for r in con.execute("SELECT cell_id FROM cells")}

    @patient
    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """All rows (JSON columns decoded), optionally filtered by equality on columns.

        A row whose JSON cannot be decoded is an error naming the cell and the repair, not a
        row silently skipped: a report missing a cell would look complete.
        """
        if not self._readable():
            return []
        sql = "SELECT * FROM cells"
        if where:
            sql += " WHERE " + " AND ".join(f"{k} = :{k}" for k in where)
        sql += " ORDER BY finished_at"
        with self._reader() as con:
            if "cells" not in table_names(con):
                return []
            out = []
            for r in con.execute(sql, where):
                d = dict(r)
                for col in JSON_COLUMNS:
                    d[col] = loads_json(d[col], self.path, f"column {col} of cell {d['cell_id']}") if d[col] else {}
                out.append(d)
            return out

    def diagnostics(self, cell_ids: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Cell id -> its diagnostic records ``{step, name, layer, value}`` (all cells, or ``cell_ids``)."""
        return self._side("diagnostics", "step, name, layer, value", "step, name, layer", cell_ids)

    def events(self, cell_ids: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Cell id -> its events ``{kind, step, layer, detail}`` in order (all cells, or ``cell_ids``)."""
        return self._side("events", "kind, step, layer, detail", "seq", cell_ids)

    @patient
    def _side(self, table: str, cols: str, order: str, cell_ids: list[str] | None) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        if not self._readable():
            return out
        with self._reader() as con:
            if table not in table_names(con):  # a store written before this table existed
                return out
            sql = f"SELECT cell_id, {cols} FROM {table}"
            if cell_ids is not None:
                sql += f" WHERE cell_id IN ({', '.join('?' * len(cell_ids))})"
            for r in con.execute(f"{sql} ORDER BY cell_id, {order}", cell_ids or []):
                d = dict(r)
                out.setdefault(d.pop("cell_id"), []).append(d)
        return out

    @patient
    def meta(self) -> dict[str, Any]:
        """The stored plan and other run-level values (JSON decoded)."""
        if not self._readable():
            return {}
        with self._reader() as con:
            if "meta" not in table_names(con):
                return {}
            return {r["key"]: loads_json(r["value"], self.path, f"meta value {r['key']!r}")
                    for r in con.execute("SELECT * FROM meta")}
