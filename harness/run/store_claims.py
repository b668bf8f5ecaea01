"""Claims on a results store's cells: which process trains a cell now, whether that process is
still the one that claimed it (its pid and start time), who holds a locked store, and
:func:`patient`, which runs a store operation again past a lock SQLite's own wait did not get past.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from modtransfer.run.store_schema import (
    StoreBusyError,
    StoreConnection,
    StoreError,
    open_readonly,
    rollback,
    table_names,
)

T = TypeVar("T")


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




class StoreClaims(StoreConnection):
    """Claiming a cell before training it, releasing the claim, listing live claims."""

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
                rollback(con)
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
    def running(self) -> list[dict[str, Any]]:
        """Claims of cells in progress whose process is still alive."""
        if not self._readable():
            return []
        with self._reader() as con:
            if "running" not in table_names(con):
                return []
            rows = [dict(r) for r in con.execute("SELECT * FROM running")]
        return [r for r in rows if claim_alive(r)]
