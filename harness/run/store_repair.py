"""Repairing a damaged results store: every row it still yields is copied into a fresh store; the
damaged file is kept beside it (``results.sqlite.corrupt-<timestamp>``). A healthy store is left
exactly as it is (not a byte changed, nothing moved)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from modtransfer.core.errors import UserError
from modtransfer.run.row import JSON_COLUMNS
from modtransfer.run.store_claims import claim_alive
from modtransfer.run.store_schema import (
    SCHEMA,
    SIDE_SCHEMA,
    SIDE_TABLES,
    open_readonly,
    rollback,
    schema_problem,
    store_path,
    table_names,
)


class Repaired(NamedTuple):
    """What :func:`repair` did: the fresh store, the kept damaged file, rows copied and rows lost.

    A healthy store is left untouched: then ``old_path`` is ``new_path`` and ``copied`` counts its cells.
    """

    new_path: Path
    old_path: Path
    copied: int
    lost: int

    @property
    def healthy(self) -> bool:
        """Whether the store needed no repair (nothing was moved or written)."""
        return self.old_path == self.new_path


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
    n_healthy = healthy_cells(path)
    if n_healthy is not None:
        return Repaired(path, path, n_healthy, 0)
    cells, meta, lost, claims = _salvage(path)
    side = _salvage_side(path)
    live = [c for c in claims if {"pid", "host"} <= set(c) and claim_alive(c)]
    if live:
        c = live[0]
        raise UserError(f"{len(live)} cell(s) of {path} are running (pid {c['pid']} on {c['host']}); "
                        f"stop that run before repairing its store")
    old = _kept_name(path)
    tmp = path.with_name(f"{path.name}.repair-tmp")
    for p in (tmp, Path(f"{tmp}-journal")):
        p.unlink(missing_ok=True)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        copied, failed = _write_fresh(con, cells, meta, side)
    except BaseException:
        rollback(con)
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    lost += failed
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{old}{suffix}")
    os.replace(tmp, path)
    return Repaired(path, old, copied, lost)


def healthy_cells(path: Path) -> int | None:
    """The number of cells of a store that needs no repair, or None when it does.

    Healthy: SQLite's integrity check passes, every table has the columns this version reads
    (:func:`~modtransfer.run.store_schema.schema_problem`), and every cell's JSON and every meta
    value decode. Read through a read-only connection: nothing is written.
    """
    try:
        con = open_readonly(path)
    except sqlite3.Error:
        return None
    try:
        if [r[0] for r in con.execute("PRAGMA integrity_check(1)")] != ["ok"] or schema_problem(con, path):
            return None
        tables = table_names(con)
        n = 0
        if "cells" in tables:
            for row in con.execute(f"SELECT {', '.join(JSON_COLUMNS)} FROM cells"):
                for value in row:
                    json.loads(value)
                n += 1
        if "meta" in tables:
            for (value,) in con.execute("SELECT value FROM meta"):
                json.loads(value)
        return n
    except (sqlite3.Error, TypeError, ValueError):
        return None
    finally:
        con.close()


def _kept_name(path: Path) -> Path:
    """``results.sqlite.corrupt-<timestamp>`` (with ``-<n>`` when that name is taken): where the damaged file goes."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    old = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while old.exists():
        old = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return old


def _write_fresh(con: sqlite3.Connection, cells: list[dict[str, Any]], meta: list[tuple[str, str]],
                 side: dict[str, list[tuple[Any, ...]]]) -> tuple[int, int]:
    """Fill a fresh store in one transaction: (cells copied, cells its constraints refused)."""
    copied = lost = 0
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
    return copied, lost


def format_repair(result: Repaired) -> str:
    """The lines ``modtransfer store repair`` prints."""
    if result.healthy:
        return (f"{result.new_path} is healthy ({result.copied} cell(s), every row readable): nothing to repair, "
                "nothing changed")
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
        tables = table_names(con)
        for table in SIDE_TABLES:
            if table in tables:
                out[table] = [tuple(r) for r in con.execute(f"SELECT * FROM {table}")]
    except sqlite3.Error:
        pass
    finally:
        con.close()
    return out


def _salvage(path: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]], int, list[dict[str, Any]]]:
    """Every readable cell row, meta entry and claim of a possibly damaged store, and rows lost."""
    try:
        con = open_readonly(path)
    except sqlite3.Error:
        return [], [], 0, []
    try:
        try:
            tables = table_names(con)
            indexes = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cells'")]
        except sqlite3.Error:
            return [], [], 0, []
        cells, lost = _salvage_cells(con, indexes) if "cells" in tables else ([], 0)
        meta = _salvage_meta(con) if "meta" in tables else []
        claims: list[dict[str, Any]] = []
        if "running" in tables:
            try:
                claims.extend(dict(r) for r in con.execute("SELECT * FROM running"))
            except sqlite3.Error:
                pass
    finally:
        con.close()
    return cells, meta, lost, claims


def _salvage_cells(con: sqlite3.Connection, indexes: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The readable rows of ``cells`` (their JSON decodable) and how many were lost.

    Row ids are gathered from both ends of the table and of its primary-key index, so a bad
    page hides only the rows on it; each row is then read on its own.
    """
    rowids: set[int] = set()
    scans = [f"SELECT rowid FROM cells NOT INDEXED ORDER BY rowid {o}" for o in ("ASC", "DESC")]
    scans += [f"SELECT rowid FROM cells INDEXED BY {ix} ORDER BY cell_id {o}" for ix in indexes for o in ("ASC", "DESC")]
    for sql in scans:
        try:
            for (rid,) in con.execute(sql):
                rowids.add(rid)
        except sqlite3.Error:
            pass
    cells, lost = [], 0
    for rid in sorted(rowids):
        try:
            r = con.execute("SELECT * FROM cells WHERE rowid = ?", (rid,)).fetchone()
        except sqlite3.Error:
            lost += 1
            continue
        if r is None:
            continue
        row = dict(r)
        try:  # a row without a JSON column (a foreign or older table) cannot be a result: lost
            for col in JSON_COLUMNS:
                json.loads(row.get(col))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            lost += 1
            continue
        cells.append(row)
    return cells, lost


def _salvage_meta(con: sqlite3.Connection) -> list[tuple[str, str]]:
    """The decodable meta entries (an undecodable one is dropped; the next run writes the plan again)."""
    meta = []
    try:
        for r in con.execute("SELECT key, value FROM meta"):
            try:
                json.loads(r["value"])
            except (TypeError, ValueError):
                continue
            meta.append((r["key"], r["value"]))
    except sqlite3.Error:
        pass
    return meta
