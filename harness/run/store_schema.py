"""The results store's foundations: its file and schema, its errors, read-only connections, and
claims (is the process that claimed a cell still the one that claimed it?).

The ``cells`` table is :class:`~modtransfer.run.row.Row`'s fields; ``running`` holds claims of
cells in progress, ``meta`` run-level values (the plan, the run folder's id).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from modtransfer.core.errors import UserError
from modtransfer.run.row import COLUMNS, JSON_COLUMNS, STATUSES, VALUED_STATUSES, cells_table_sql

__all__ = ["COLUMNS", "JSON_COLUMNS", "REQUIRED_COLUMNS", "SCHEMA", "SIDE_SCHEMA", "SIDE_TABLES", "STATUSES",
           "STORE_NAME", "VALUED_STATUSES", "claim_alive", "lock_holder", "open_readonly", "patient",
           "process_start", "repair_hint", "schema_problem", "store_path"]

STORE_NAME = "results.sqlite"
T = TypeVar("T")

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


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError | None:
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


def _rollback(con: sqlite3.Connection) -> None:
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


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _loads(text: str, path: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise CorruptStoreError(f"the results store {path} holds undecodable JSON in {what}; "
                                f"drop that row and keep the rest with: {repair_hint(path)}") from None


def _json_cells(con: sqlite3.Connection) -> Iterator[tuple[str, sqlite3.Row]]:
    if "cells" not in _tables(con):
        return
    for row in con.execute(f"SELECT cell_id, {', '.join(JSON_COLUMNS)} FROM cells"):
        for col in JSON_COLUMNS:
            yield col, row


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
    tables = _tables(con)
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


def patient(method: Callable[..., T]) -> Callable[..., T]:
    """Run a store operation again when it meets a lock that SQLite's own wait did not get past.

    SQLite's busy timeout covers most waits, but it returns "database is locked" at once where
    waiting could deadlock (two connections switching a new file to WAL, a read snapshot gone
    stale); the operation's transaction is then rolled back, so it is simply run again, after a
    growing, jittered pause. Past the store's ``patience_s`` the error is one line naming the
    process that holds the store (:func:`lock_holder`).
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        started = time.monotonic()
        delay = 0.02
        while True:
            try:
                return method(self, *args, **kwargs)
            except StoreBusyError:
                waited = time.monotonic() - started
                if waited + delay > self.patience_s:
                    raise StoreBusyError(f"the results store {self.path} stayed locked for {waited:.0f} s by "
                                         f"{lock_holder(self.path)}; let it finish (or stop it) and run the same "
                                         "command again: finished cells are kept") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(2.0, delay * 2)

    return wrapper


def lock_holder(path: Path) -> str:
    """Who holds a store, from its claims: "pid N on HOST (training CELL since S s)", or what is known."""
    try:
        con = open_readonly(path, timeout=0.5)
        try:
            claims = [dict(r) for r in con.execute("SELECT * FROM running ORDER BY started_at")]
        finally:
            con.close()
    except sqlite3.Error:
        claims = []
    others = [c for c in claims if {"pid", "host", "started_at"} <= set(c) and claim_alive(c)
              and (c["pid"], c["host"]) != (os.getpid(), socket.gethostname())]
    if not others:
        return ("another process (no live claim in the store names it: a run starting or ending, or a status "
                "or report reading)")
    c = others[0]
    return (f"another process: pid {c['pid']} on {c['host']} (training cell {c.get('cell_id')} for "
            f"{max(0.0, time.time() - c['started_at']):.0f} s" + (f", and {len(others) - 1} more cell(s)"
                                                                   if len(others) > 1 else "") + ")")


# -- claims: is the claiming process still the one that claimed? ----------------------
@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """An id of the process ``pid``'s start: the same pid reused by a new process gives another.

    On Linux, field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot) with the
    boot id; elsewhere psutil's create time when it is installed; otherwise None (unknown).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ", fields 3, 4, ...
        return f"{_boot_id()}:{fields[22 - 3]}"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        return f"psutil:{psutil.Process(pid).create_time():.2f}"
    except Exception:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_alive(claim: dict[str, Any]) -> bool:
    """Whether a ``running`` row's process still runs: same host, pid alive, same start time.

    Claims from another host cannot be checked and are trusted; claims written before the
    start time was recorded are judged by their pid alone.
    """
    if claim["host"] != socket.gethostname():
        return True
    if not _pid_alive(claim["pid"]):
        return False
    recorded = claim.get("proc_start")
    if recorded is None:
        return True
    now = process_start(claim["pid"])
    return now is None or now == recorded


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return str(obj)
