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

import functools
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from modtransfer.core.errors import UserError

STATUSES = ("done", "diverged", "failed", "timeout")
#: statuses whose row may carry a primary value (a diverged or failed cell never does)
VALUED_STATUSES = ("done", "timeout")
STORE_NAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id         TEXT PRIMARY KEY,
    benchmark       TEXT NOT NULL,
    variant         TEXT NOT NULL,
    task            TEXT NOT NULL,
    seed            INTEGER NOT NULL,
    size            TEXT NOT NULL,
    hparams         TEXT NOT NULL,      -- JSON: hyper-parameter axis values of this cell ({} if none)
    status          TEXT NOT NULL CHECK (status IN ('done', 'diverged', 'failed', 'timeout')),
    primary_metric  TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL,
    primary_value   REAL,               -- NULL unless the cell produced a finite final evaluation
    metrics         TEXT NOT NULL,      -- JSON: all final metrics
    curve           TEXT NOT NULL,      -- JSON: [{"step": s, "train_loss": x, <val metrics>...}, ...]
    params          INTEGER,
    flops_per_token REAL,
    tokens_per_s    REAL,
    mfu             REAL,               -- model-FLOP utilisation: 3 x FLOPs/token x tokens/s / matmul peak
    train_s         REAL,               -- seconds inside the training loop
    wall_s          REAL,               -- seconds from cell start to row
    startup_s       REAL,               -- seconds from cell start to the first training step
    steps           INTEGER,
    failed_step     INTEGER,            -- step of divergence / timeout
    error           TEXT,               -- traceback or reason
    spec            TEXT NOT NULL,      -- JSON: the resolved ModelSpec
    task_config     TEXT NOT NULL,      -- JSON
    budget          TEXT NOT NULL,      -- JSON
    env             TEXT NOT NULL,      -- JSON: versions, git commit, device, host
    wandb_dir       TEXT,
    finished_at     REAL NOT NULL
);
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

JSON_COLUMNS = ("hparams", "metrics", "curve", "spec", "task_config", "budget", "env")


class StoreError(UserError):
    """A results store that cannot be read or written as asked; the message says what to do."""


class CorruptStoreError(StoreError):
    """The store file is damaged, not an SQLite database, or not a results store."""


class StoreFullError(StoreError):
    """The disk (or SQLite's page limit) is full: the write was rolled back, nothing half-written."""


class ReadOnlyStoreError(StoreError):
    """A write to a store opened ``readonly=True`` or that this user may not write."""


class Repaired(NamedTuple):
    """What :func:`repair` did: the fresh store, the kept damaged file, rows copied and rows lost."""

    new_path: Path
    old_path: Path
    copied: int
    lost: int


def store_path(target: str | Path) -> Path:
    """The store file of a run folder, or ``target`` itself when it names a file."""
    p = Path(target)
    return p / STORE_NAME if p.is_dir() else p


def repair_hint(path: Path) -> str:
    """The command that rebuilds the store at ``path`` from its readable rows."""
    return f"modtransfer store repair {path.parent if path.name == STORE_NAME else path}"


class Store:
    """A results store at ``path`` (created on first write).

    Reads always use a read-only connection; ``readonly=True`` also refuses every write, for
    commands that only look (``status``, ``report``). The file is checked once per object.
    """

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
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                con.execute("PRAGMA busy_timeout=60000")
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
            con = open_readonly(self.path)
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
        tables = _tables(con)
        if tables and "cells" not in tables:
            raise CorruptStoreError(f"{self.path} is an SQLite file without a 'cells' table, not a results store; "
                                    f"move it away, or rebuild it with: {repair_hint(self.path)}")
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

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (the plan, the skipped pairs)."""
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=_json_default)))

    # -- reads ----------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store file exists (it may still be empty)."""
        return self.path.is_file()

    def check(self) -> None:
        """Raise :class:`CorruptStoreError` now if the store is damaged (a no-op when it is missing)."""
        if self._readable():
            with self._reader() as con:
                for col, row in _json_cells(con):
                    _loads(row[col], self.path, f"column {col} of cell {row['cell_id']}")

    def done_ids(self) -> set[str]:
        """Ids of every recorded cell, whatever its status."""
        if not self._readable():
            return set()
        with self._reader() as con:
            if "cells" not in _tables(con):
                return set()
            return {r[0] for r in con.execute("SELECT cell_id FROM cells")}

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

    def running(self) -> list[dict[str, Any]]:
        """Claims of cells in progress whose process is still alive."""
        if not self._readable():
            return []
        with self._reader() as con:
            if "running" not in _tables(con):
                return []
            rows = [dict(r) for r in con.execute("SELECT * FROM running")]
        return [r for r in rows if claim_alive(r)]

    def meta(self) -> dict[str, Any]:
        """The stored plan and other run-level values (JSON decoded)."""
        if not self._readable():
            return {}
        with self._reader() as con:
            if "meta" not in _tables(con):
                return {}
            return {r["key"]: _loads(r["value"], self.path, f"meta value {r['key']!r}")
                    for r in con.execute("SELECT * FROM meta")}


# -- connections and errors ----------------------------------------------------------
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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return str(obj)


# -- repair ---------------------------------------------------------------------------
def repair(target: str | Path) -> Repaired:
    """Rebuild a damaged store from every row it still yields, keeping the damaged file.

    ``target`` is a run folder or a store file. Readable cells (their JSON decodable, their
    row valid) and meta entries are copied into a fresh store, written under a temporary name
    and moved into place; the old file (with its ``-wal``) becomes
    ``results.sqlite.corrupt-<timestamp>``. Cells that cannot be read are counted as lost;
    a rerun trains them again. Refused while a live process holds a claim on the store.
    """
    path = store_path(target)
    if not path.is_file():
        raise UserError(f"no results store at {path}; pass a run folder like runs/<benchmark>")
    cells, meta, lost, claims = _salvage(path)
    side = _salvage_side(path)
    live = [c for c in claims if claim_alive(c)]
    if live:
        c = live[0]
        raise UserError(f"{len(live)} cell(s) of {path} are running (pid {c['pid']} on {c['host']}); "
                        f"stop that run before repairing its store")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    old = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while old.exists():
        old = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    tmp = path.with_name(f"{path.name}.repair-tmp")
    for p in (tmp, Path(f"{tmp}-journal")):
        p.unlink(missing_ok=True)
    copied = 0
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.executescript(SCHEMA)
        columns = [r[1] for r in con.execute("PRAGMA table_info(cells)")]
        con.execute("BEGIN")
        for row in cells:
            values = {k: v for k, v in row.items() if k in columns}
            try:
                con.execute(f"INSERT OR IGNORE INTO cells ({', '.join(values)}) "
                            f"VALUES ({', '.join(':' + k for k in values)})", values)
                copied += 1
            except sqlite3.Error:  # a NOT NULL or CHECK constraint the damaged row breaks
                lost += 1
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
        kept = {r[0] for r in con.execute("SELECT cell_id FROM cells")}
        for table, rows in side.items():
            rows = [r for r in rows if r[0] in kept]
            if rows:
                con.execute(SIDE_SCHEMA[table])
                con.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{old}{suffix}")
    os.replace(tmp, path)
    return Repaired(path, old, copied, lost)


def format_repair(result: Repaired) -> str:
    """The lines ``modtransfer store repair`` prints."""
    lines = [f"repaired {result.new_path}: {result.copied} cell(s) copied, {result.lost} lost",
             f"the damaged file is kept as {result.old_path}"]
    if result.lost:
        lines.append("run the benchmark again to retrain the lost cells")
    return "\n".join(lines)


def _salvage_side(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The readable rows of the diagnostics and events tables (best effort: they explain, never count)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    try:
        con = open_readonly(path)
    except sqlite3.Error:
        return out
    try:
        tables = _tables(con)
        for table in SIDE_TABLES:
            if table in tables:
                out[table] = [tuple(r) for r in con.execute(f"SELECT * FROM {table}")]
    except sqlite3.Error:
        pass
    finally:
        con.close()
    return out


def _salvage(path: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]], int, list[dict[str, Any]]]:
    """Every readable cell row, meta entry and claim of a possibly damaged store, and rows lost.

    Row ids are gathered from both ends of the table and of its primary-key index, so a bad
    page hides only the rows on it; each row is then read on its own.
    """
    try:
        con = open_readonly(path)
    except sqlite3.Error:
        return [], [], 0, []
    cells: list[dict[str, Any]] = []
    meta: list[tuple[str, str]] = []
    claims: list[dict[str, Any]] = []
    lost = 0
    try:
        try:
            tables = _tables(con)
            indexes = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cells'")]
        except sqlite3.Error:
            return [], [], 0, []
        if "cells" in tables:
            rowids: set[int] = set()
            scans = [f"SELECT rowid FROM cells NOT INDEXED ORDER BY rowid {o}" for o in ("ASC", "DESC")]
            scans += [f"SELECT rowid FROM cells INDEXED BY {ix} ORDER BY cell_id {o}"
                      for ix in indexes for o in ("ASC", "DESC")]
            for sql in scans:
                try:
                    for (rid,) in con.execute(sql):
                        rowids.add(rid)
                except sqlite3.Error:
                    pass
            for rid in sorted(rowids):
                try:
                    r = con.execute("SELECT * FROM cells WHERE rowid = ?", (rid,)).fetchone()
                except sqlite3.Error:
                    lost += 1
                    continue
                if r is None:
                    continue
                row = dict(r)
                try:
                    for col in JSON_COLUMNS:
                        json.loads(row[col])
                except (TypeError, ValueError):
                    lost += 1
                    continue
                cells.append(row)
        if "meta" in tables:
            try:
                for r in con.execute("SELECT key, value FROM meta"):
                    try:
                        json.loads(r["value"])
                    except (TypeError, ValueError):
                        continue  # an undecodable entry is dropped; the next run writes the plan again
                    meta.append((r["key"], r["value"]))
            except sqlite3.Error:
                pass
        if "running" in tables:
            try:
                claims.extend(dict(r) for r in con.execute("SELECT * FROM running"))
            except sqlite3.Error:
                pass
    finally:
        con.close()
    return cells, meta, lost, claims
