"""The results store: one SQLite row per finished cell.

A row is written in a single transaction when its cell ends (``done``, ``diverged``,
``failed`` or ``timeout``), so a cell killed mid-way leaves no row and is simply run again.
The primary key is the cell's stable hash, and inserts never replace, so two writers can never
record the same cell twice. WAL journal and a busy timeout make concurrent writers safe.
A second table, ``running``, holds claims of cells in progress (for ``status``), keyed by the
same id; a claim whose process is gone, or whose pid now belongs to another process (the
process start time differs), is stale and ignored.

Nothing wrong is ever stored or read as a result:

* a damaged or foreign file is detected once per :class:`Store` (``PRAGMA quick_check``, the
  ``cells`` table, decodable JSON) and reported as a :class:`CorruptStoreError` naming
  ``modtransfer store repair <run_dir>`` (:func:`repair`), never as a traceback;
* reads open the file read-only (``mode=ro``; ``immutable=1`` when the folder cannot hold
  SQLite's lock files), so ``status`` and ``report`` work on a store the reader may not
  write, and never change it: no WAL switch, no tables created, no bytes written;
* a write that fails for a full disk raises :class:`StoreFullError`; its transaction is rolled
  back, so the cell is not recorded and a rerun after freeing space trains it again.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modtransfer.run.store_base import (
    JSON_COLUMNS,
    SCHEMA,
    SIDE_SCHEMA,
    SIDE_TABLES,
    STATUSES,
    STORE_NAME,
    VALUED_STATUSES,
    CorruptStoreError,
    ForeignStoreError,
    ReadOnlyStoreError,
    StoreBusyError,
    StoreError,
    StoreFullError,
    _finite,
    _json_cells,
    _json_default,
    _loads,
    _rollback,
    _store_error,
    _tables,
    claim_alive,
    open_readonly,
    patient,
    process_start,
    repair_hint,
    schema_problem,
    store_path,
)
from modtransfer.run.store_repair import Repaired, format_repair, repair

__all__ = ["SCHEMA", "SIDE_SCHEMA", "STATUSES", "STORE_NAME", "VALUED_STATUSES", "CorruptStoreError",
           "ForeignStoreError", "ReadOnlyStoreError", "Repaired", "Store", "StoreBusyError", "StoreError",
           "StoreFullError", "claim_alive", "format_repair", "open_readonly", "process_start", "repair", "repair_hint",
           "sanitise_row", "store_path"]


class Store:
    """A results store at ``path`` (created on first write).

    Reads always use a read-only connection; ``readonly=True`` also refuses every write, for
    commands that only look (``status``, ``report``). The file is checked once per object.
    """

    #: seconds SQLite waits for a lock within one statement; and in all, retries included, for one operation
    busy_timeout_s = 60.0
    patience_s = 180.0

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._verified = False
        self._upgraded = False

    # -- connections ----------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A writable connection (WAL, schema created): for writers only."""
        if self.readonly:
            raise ReadOnlyStoreError(f"the results store {self.path} was opened read-only; nothing was written")
        with self._errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            try:
                self._verify(con)  # before WAL and schema: a foreign or damaged file is never touched
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes with WAL
                con.executescript(SCHEMA)
                self._upgrade(con)
                con.row_factory = sqlite3.Row
                yield con
            finally:
                con.close()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection: never switches on WAL, creates tables or writes a byte."""
        with self._errors():
            con = open_readonly(self.path, self.busy_timeout_s)
            try:
                self._verify(con)
                yield con
            finally:
                con.close()

    def _readable(self) -> bool:
        """Whether there is anything to read: a missing or 0-byte file is an empty store."""
        try:
            return self.path.is_file() and self.path.stat().st_size > 0
        except OSError:
            return False

    def _verify(self, con: sqlite3.Connection) -> None:
        """Check the file once per object: SQLite's quick check, then the ``cells`` table."""
        if self._verified or not self._readable():
            return
        problems = [r[0] for r in con.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            found = " ".join(" ".join(problems).split())  # quick_check reports several lines: keep the message one
            raise CorruptStoreError(f"the results store {self.path} is damaged ({found[:200]}); "
                                    f"recover its readable rows with: {repair_hint(self.path)}")
        problem = schema_problem(con, self.path)  # before any write: a foreign store is never touched
        if problem:
            raise ForeignStoreError(problem)
        self._verified = True

    def _upgrade(self, con: sqlite3.Connection) -> None:
        """Add the columns a store made by an older version lacks (once per object)."""
        if self._upgraded:
            return
        cols = {r[1] for r in con.execute("PRAGMA table_info(running)")}
        if "proc_start" not in cols:
            con.execute("BEGIN IMMEDIATE")
            try:
                if "proc_start" not in {r[1] for r in con.execute("PRAGMA table_info(running)")}:
                    con.execute("ALTER TABLE running ADD COLUMN proc_start TEXT")
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
        self._upgraded = True

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's errors that a user can act on into one-line :class:`StoreError` s."""
        try:
            yield
        except sqlite3.Error as exc:
            mapped = _store_error(self.path, exc)
            if mapped is None:
                raise
            raise mapped from None

    # -- writes ---------------------------------------------------------------------
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
                                     default=_json_default)
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
                    _rollback(con)
                    raise
                return cur.rowcount == 1
        except StoreFullError:
            label = "/".join(str(row.get(k)) for k in ("task", "variant", "seed"))
            raise StoreFullError(
                f"the disk holding {self.path} is full: cell {label} ({row['cell_id']}) trained but was not "
                f"recorded; free some space and run the same command again: it trains that cell again "
                f"(cells already recorded are kept)") from None

    @patient
    def claim(self, cell_id: str) -> bool:
        """Mark a cell as running in this process; False if it is done or a live process runs it."""
        me = os.getpid()
        with self.connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
                done = con.execute("SELECT 1 FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
                other = con.execute("SELECT * FROM running WHERE cell_id = ?", (cell_id,)).fetchone()
                if done or (other and other["pid"] != me and claim_alive(dict(other))):
                    con.execute("ROLLBACK")
                    return False
                con.execute("INSERT OR REPLACE INTO running (cell_id, pid, host, started_at, proc_start) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (cell_id, me, socket.gethostname(), time.time(), process_start(me)))
                con.execute("COMMIT")
                return True
            except BaseException:
                _rollback(con)
                raise

    def release(self, cell_id: str) -> None:
        """Drop this process's claim; best effort, since a claim outlives its process only as a stale one.

        It never raises a store error: it runs in ``finally`` blocks, where it would hide the
        error that matters (a full disk while recording the row, say).
        """
        try:
            with self.connect() as con:
                con.execute("DELETE FROM running WHERE cell_id = ? AND pid = ?", (cell_id, os.getpid()))
        except (StoreError, sqlite3.Error):
            pass

    @patient
    def delete(self, status: str) -> int:
        """Delete every row of ``status`` (``run --retry-failed``); the number deleted."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for table in set(SIDE_TABLES) & _tables(con):
                    con.execute(f"DELETE FROM {table} WHERE cell_id IN (SELECT cell_id FROM cells WHERE status = ?)",
                                (status,))
                n = con.execute("DELETE FROM cells WHERE status = ?", (status,)).rowcount
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
            return n

    @patient
    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (the plan, the skipped pairs)."""
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=_json_default)))

    # -- reads ----------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store file exists (it may still be empty)."""
        return self.path.is_file()

    @patient
    def check(self) -> None:
        """Raise :class:`CorruptStoreError` now if the store is damaged (a no-op when it is missing)."""
        if self._readable():
            with self._reader() as con:
                for col, row in _json_cells(con):
                    _loads(row[col], self.path, f"column {col} of cell {row['cell_id']}")

    @patient
    def done_ids(self) -> set[str]:
        """Ids of every recorded cell, whatever its status."""
        if not self._readable():
            return set()
        with self._reader() as con:
            if "cells" not in _tables(con):
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
            if "cells" not in _tables(con):
                return []
            out = []
            for r in con.execute(sql, where):
                d = dict(r)
                for col in JSON_COLUMNS:
                    d[col] = _loads(d[col], self.path, f"column {col} of cell {d['cell_id']}") if d[col] else {}
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
            if table not in _tables(con):  # a store written before this table existed
                return out
            sql = f"SELECT cell_id, {cols} FROM {table}"
            if cell_ids is not None:
                sql += f" WHERE cell_id IN ({', '.join('?' * len(cell_ids))})"
            for r in con.execute(f"{sql} ORDER BY cell_id, {order}", cell_ids or []):
                d = dict(r)
                out.setdefault(d.pop("cell_id"), []).append(d)
        return out

    @patient
    def running(self) -> list[dict[str, Any]]:
        """Claims of cells in progress whose process is still alive."""
        if not self._readable():
            return []
        with self._reader() as con:
            if "running" not in _tables(con):
                return []
            rows = [dict(r) for r in con.execute("SELECT * FROM running")]
        return [r for r in rows if claim_alive(r)]

    @patient
    def meta(self) -> dict[str, Any]:
        """The stored plan and other run-level values (JSON decoded)."""
        if not self._readable():
            return {}
        with self._reader() as con:
            if "meta" not in _tables(con):
                return {}
            return {r["key"]: _loads(r["value"], self.path, f"meta value {r['key']!r}")
                    for r in con.execute("SELECT * FROM meta")}


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


def _insert_side(con: sqlite3.Connection, cell_id: str, side: dict[str, list[dict[str, Any]]]) -> None:
    """A row's diagnostics and events into their tables (inside the row's transaction)."""
    values = {
        "diagnostics": [(cell_id, int(d["step"]), str(d["name"]), str(d.get("layer") or ""), _finite(d.get("value")))
                        for d in side["diagnostics"]],
        "events": [(cell_id, i, str(e["kind"]), e.get("step"), e.get("layer"), str(e.get("detail") or ""))
                   for i, e in enumerate(side["events"])],
    }
    for table, rows in values.items():
        if rows:
            con.execute(SIDE_SCHEMA[table])
            con.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
