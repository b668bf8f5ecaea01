"""The results store's file, tables and connections: its schema (the ``cells`` table is
:class:`~modtransfer.run.row.Row`'s fields; ``running`` holds claims of cells in progress, ``meta``
run-level values, two side tables a row's diagnostics and events), the errors a user can act on,
read-only connections, and :class:`StoreConnection`, the writable connection every part of
:class:`~modtransfer.run.store.Store` opens.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modtransfer.core.errors import UserError
from modtransfer.run.row import COLUMNS, cells_table_sql

STORE_NAME = "results.sqlite"
SCHEMA = cells_table_sql() + """
CREATE TABLE IF NOT EXISTS running (
    cell_id    TEXT PRIMARY KEY,
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    started_at REAL NOT NULL,
    proc_start TEXT                     -- the claiming process's start time (boot id + clock ticks)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: Created with the first row that has diagnostics or events, so a store without any (and one
#: written before these tables existed) has none; readers treat a missing table as empty.
SIDE_SCHEMA = {
    "diagnostics": """CREATE TABLE IF NOT EXISTS diagnostics (  -- one value per cell, step, measure and layer
    cell_id TEXT NOT NULL,
    step    INTEGER NOT NULL,
    name    TEXT NOT NULL,               -- modtransfer.run.diagnostics: grad_norm, attn_entropy, ...
    layer   TEXT NOT NULL,               -- '' for a global value
    value   REAL,                        -- NULL when not finite
    PRIMARY KEY (cell_id, name, layer, step)
)""",
    "events": """CREATE TABLE IF NOT EXISTS events (  -- modtransfer.run.events: why a cell ended as it did
    cell_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,            -- order of the cell's events
    kind    TEXT NOT NULL,
    step    INTEGER,
    layer   TEXT,
    detail  TEXT NOT NULL,
    PRIMARY KEY (cell_id, seq)
)""",
}
#: row keys stored in their own tables, not as columns of ``cells``
SIDE_TABLES = tuple(SIDE_SCHEMA)
class StoreError(UserError):
    """A results store that cannot be read or written as asked; the message says what to do."""


class CorruptStoreError(StoreError):
    """The store file is damaged, not an SQLite database, or not a results store."""


class ForeignStoreError(CorruptStoreError):
    """An SQLite file whose tables lack the columns this version reads and writes (another program's, or older)."""


class StoreBusyError(StoreError):
    """Another process kept the store locked longer than a writer waits."""


class StoreFullError(StoreError):
    """The disk (or SQLite's page limit) is full: the write was rolled back, nothing half-written."""


class ReadOnlyStoreError(StoreError):
    """A write to a store opened ``readonly=True`` or that this user may not write."""


def store_path(target: str | Path) -> Path:
    """The store file of a run folder, or ``target`` itself when it names a file."""
    p = Path(target)
    return p / STORE_NAME if p.is_dir() else p


def repair_hint(path: Path) -> str:
    """The command that rebuilds the store at ``path`` from its readable rows."""
    return f"modtransfer store repair {path.parent if path.name == STORE_NAME else path}"


def open_readonly(path: Path, timeout: float = 60.0) -> sqlite3.Connection:
    """A read-only connection to ``path``.

    ``mode=ro`` takes SQLite's usual shared locks, so reading while a benchmark writes is safe.
    A WAL store needs its ``-shm`` lock file, which SQLite cannot create in a folder this user
    may not write; then the file is opened ``immutable=1`` (no locks, no lock files): nobody
    can be writing to a folder that cannot hold lock files.
    """
    uri = Path(os.path.abspath(path)).as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read opens the WAL index
    except sqlite3.OperationalError as exc:
        if not _errorname(exc).startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            con.close()
            raise
        con.close()
        con = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout, isolation_level=None)
    except BaseException:
        con.close()
        raise
    con.row_factory = sqlite3.Row
    return con


def _errorname(exc: sqlite3.Error) -> str:
    return str(getattr(exc, "sqlite_errorname", "") or "")


def store_error(path: Path, exc: sqlite3.Error) -> StoreError | None:
    """The :class:`StoreError` an SQLite error means for a user, or None for a plain bug."""
    name, text = _errorname(exc), " ".join(str(exc).split())
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in text:
        return StoreBusyError(f"the results store {path} is locked by another process ({text}); wait for it and run "
                              "the same command again")
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StoreFullError(f"the disk holding {path} is full ({text}); nothing was half-written: "
                              f"free some space and run the same command again")
    if name == "SQLITE_NOTADB" or "file is not a database" in text:
        return CorruptStoreError(f"{path} is not an SQLite database ({text}); move it away, or keep it aside "
                                 f"and start an empty store with: {repair_hint(path)}")
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return CorruptStoreError(f"the results store {path} is damaged ({text}); recover its readable rows "
                                 f"with: {repair_hint(path)}")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return ReadOnlyStoreError(f"the results store {path} cannot be written by this user ({text}); "
                                  f"run as its owner, or copy the run folder somewhere writable")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StoreError(f"cannot open the results store {path} ({text}); check the path and its permissions")
    return None


def rollback(con: sqlite3.Connection) -> None:
    """Roll back only a transaction that is still open.

    SQLite ends some failed transactions itself (a full disk, for one); an unconditional
    ``ROLLBACK`` would then raise "cannot rollback - no transaction is active" over the real
    error. Closing the connection discards whatever is left in any case.
    """
    if con.in_transaction:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def table_names(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


#: columns every table of a results store must have (``running.proc_start`` is added to an older store)
REQUIRED_COLUMNS = {
    "cells": COLUMNS,
    "running": ("cell_id", "pid", "host", "started_at"),
    "meta": ("key", "value"),
    "diagnostics": ("cell_id", "step", "name", "layer", "value"),
    "events": ("cell_id", "seq", "kind", "step", "layer", "detail"),
}


def schema_problem(con: sqlite3.Connection, path: Path) -> str | None:
    """One line naming what a store's tables lack against :class:`~modtransfer.run.row.Row`, or None.

    A store with no tables yet is fine (a writer creates them); a missing ``running``, ``meta``
    or side table is fine (created when first needed); a table present without the columns this
    version reads is a store of another program or an older modtransfer: it is never written to.
    """
    tables = table_names(con)
    if not tables:
        return None
    if "cells" not in tables:
        return (f"{path} is an SQLite file without a 'cells' table, not a results store; move it away, "
                f"or keep it aside and start an empty store with: {repair_hint(path)}")
    for table, wanted in REQUIRED_COLUMNS.items():
        if table not in tables:
            continue
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in wanted if c not in have]
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            return (f"{path} is not a results store of this modtransfer (another program's, or an older "
                    f"version's): its table {table!r} lacks column(s) {shown}; nothing was written. Copy its "
                    f"readable cells into a fresh store with `{repair_hint(path)}` (the file is kept beside it), "
                    "or run in a fresh run folder (another --runs-dir or --name)")
    return None


class StoreConnection:
    """A results store's file at ``path`` and its connections; the file is checked once per object.

    Reads always use a read-only connection; ``readonly=True`` also refuses every write, for
    commands that only look (``status``, ``report``).
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
                rollback(con)
                raise
        self._upgraded = True

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's errors that a user can act on into one-line :class:`StoreError` s."""
        try:
            yield
        except sqlite3.Error as exc:
            mapped = store_error(self.path, exc)
            if mapped is None:
                raise
            raise mapped from None
