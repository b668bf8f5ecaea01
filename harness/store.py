"""The results store: one SQLite row per finished cell.

A row is written in a single transaction when its cell ends (``done``, ``diverged``,
``failed`` or ``timeout``), so a cell killed mid-way leaves no row and is simply run again.
The primary key is the cell's stable hash, and inserts never replace, so two writers can never
record the same cell twice. WAL journal and a busy timeout make concurrent writers safe.
A second table, ``running``, holds claims of cells in progress (for ``status``), keyed by the
same id; a claim whose process is gone is stale and ignored.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUSES = ("done", "diverged", "failed", "timeout")

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
    primary_value   REAL,               -- NULL unless the cell produced a final evaluation
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
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

JSON_COLUMNS = ("hparams", "metrics", "curve", "spec", "task_config", "budget", "env")


class Store:
    """A results store at ``path`` (created on first write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes with WAL
            con.execute("PRAGMA busy_timeout=60000")
            con.executescript(SCHEMA)
            con.row_factory = sqlite3.Row
            yield con
        finally:
            con.close()

    # -- writes ---------------------------------------------------------------------
    def record(self, row: dict[str, Any]) -> bool:
        """Insert a finished cell's row in one transaction; False if the cell was already there."""
        if row["status"] not in STATUSES:
            raise ValueError(f"bad status {row['status']!r}")
        values = dict(row)
        for col in JSON_COLUMNS:
            values[col] = json.dumps(values.get(col) if values.get(col) is not None else {}, sort_keys=True,
                                     default=_json_default)
        values.setdefault("finished_at", time.time())
        cols = ", ".join(values)
        marks = ", ".join(f":{c}" for c in values)
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                cur = con.execute(f"INSERT OR IGNORE INTO cells ({cols}) VALUES ({marks})", values)
                con.execute("DELETE FROM running WHERE cell_id = ?", (row["cell_id"],))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return cur.rowcount == 1

    def claim(self, cell_id: str) -> bool:
        """Mark a cell as running in this process; False if a live process already runs it."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                done = con.execute("SELECT 1 FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
                other = con.execute("SELECT pid, host FROM running WHERE cell_id = ?", (cell_id,)).fetchone()
                if done or (other and _alive(other["pid"], other["host"]) and other["pid"] != os.getpid()):
                    con.execute("ROLLBACK")
                    return False
                con.execute("INSERT OR REPLACE INTO running VALUES (?, ?, ?, ?)",
                            (cell_id, os.getpid(), socket.gethostname(), time.time()))
                con.execute("COMMIT")
                return True
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def release(self, cell_id: str) -> None:
        with self.connect() as con:
            con.execute("DELETE FROM running WHERE cell_id = ? AND pid = ?", (cell_id, os.getpid()))

    def delete(self, status: str) -> int:
        with self.connect() as con:
            return con.execute("DELETE FROM cells WHERE status = ?", (status,)).rowcount

    def set_meta(self, key: str, value: Any) -> None:
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=_json_default)))

    # -- reads ----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def done_ids(self) -> set[str]:
        if not self.exists():
            return set()
        with self.connect() as con:
            return {r[0] for r in con.execute("SELECT cell_id FROM cells")}

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """All rows (JSON columns decoded), optionally filtered by equality on columns."""
        if not self.exists():
            return []
        sql = "SELECT * FROM cells"
        if where:
            sql += " WHERE " + " AND ".join(f"{k} = :{k}" for k in where)
        sql += " ORDER BY finished_at"
        with self.connect() as con:
            out = []
            for r in con.execute(sql, where):
                d = dict(r)
                for col in JSON_COLUMNS:
                    d[col] = json.loads(d[col]) if d[col] else {}
                out.append(d)
            return out

    def running(self) -> list[dict[str, Any]]:
        """Claims of cells in progress whose process is still alive."""
        if not self.exists():
            return []
        with self.connect() as con:
            rows = [dict(r) for r in con.execute("SELECT * FROM running")]
        return [r for r in rows if _alive(r["pid"], r["host"])]

    def meta(self) -> dict[str, Any]:
        if not self.exists():
            return {}
        with self.connect() as con:
            return {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT * FROM meta")}


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot check another machine; trust the claim
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
