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
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modtransfer.core.errors import UserError
from modtransfer.run.row import COLUMNS, JSON_COLUMNS, STATUSES, VALUED_STATUSES, cells_table_sql

__all__ = ["COLUMNS", "JSON_COLUMNS", "SCHEMA", "SIDE_SCHEMA", "SIDE_TABLES", "STATUSES", "STORE_NAME",
           "VALUED_STATUSES", "claim_alive", "open_readonly", "process_start", "repair_hint", "store_path"]

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


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path``.

    ``mode=ro`` takes SQLite's usual shared locks, so reading while a benchmark writes is safe.
    A WAL store needs its ``-shm`` lock file, which SQLite cannot create in a folder this user
    may not write; then the file is opened ``immutable=1`` (no locks, no lock files): nobody
    can be writing to a folder that cannot hold lock files.
    """
    uri = Path(os.path.abspath(path)).as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0, isolation_level=None)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read opens the WAL index
    except sqlite3.OperationalError as exc:
        if not _errorname(exc).startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            con.close()
            raise
        con.close()
        con = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=60.0, isolation_level=None)
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
