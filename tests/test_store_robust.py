"""The results store when things go wrong: damaged files, read-only folders, full disks, reused pids.

Nothing wrong is ever stored or read as a result: a damaged store is one line naming
``modtransfer store repair`` (never a traceback), :func:`repair` keeps every readable row, a
reader never writes, a write that fails for a full disk leaves the cell unrecorded (a rerun
trains it again), and a claim whose pid now belongs to another process does not block its cell.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.run.status import summarise
from modtransfer.run.store import Store
from modtransfer.run.store_claims import process_start
from modtransfer.run.store_repair import repair
from modtransfer.run.store_schema import CorruptStoreError, ReadOnlyStoreError, StoreFullError

N_ROWS = 40


def make_row(i: int, *, status: str = "done", value: float | None = None) -> dict[str, Any]:
    """A realistic finished-cell row (about 1 KiB, so the table spans several pages)."""
    value = 0.5 + i / 100 if value is None and status == "done" else value
    return {
        "cell_id": f"cell{i:04d}", "benchmark": "b", "variant": f"v{i % 5}", "task": "regression", "seed": i,
        "size": "tiny", "hparams": {}, "status": status, "primary_metric": "val_mse", "higher_is_better": 0,
        "primary_value": value, "metrics": {"val_mse": value} if value is not None else {},
        "curve": [{"step": s, "train_loss": 1.0 / (s + 1)} for s in range(0, 400, 25)],
        "params": 1000, "flops_per_token": 6000.0, "tokens_per_s": 1e4, "mfu": 0.1, "train_s": 2.0,
        "wall_s": 3.0, "startup_s": 1.0, "steps": 100, "failed_step": None, "error": None,
        "spec": {"d_model": 32}, "task_config": {}, "budget": {"steps": 100}, "env": {"host": "test"},
    }


def fill(run_dir: Path, n: int = N_ROWS) -> Path:
    """A store with ``n`` rows and a plan in ``run_dir``; every connection closed (WAL checkpointed)."""
    store = Store(run_dir / "results.sqlite")
    for i in range(n):
        assert store.record(make_row(i))
    store.set_meta("plan", {"name": "b"})
    return store.path


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def damage_middle_page(path: Path) -> None:
    """Overwrite, with junk, the table-leaf page nearest the middle of the file (rows on it are lost)."""
    con = sqlite3.connect(path)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    data = path.read_bytes()
    pages = len(data) // page
    assert pages >= 6, "the test store should span several pages"
    leaves = [i for i in range(1, pages) if data[i * page] == 0x0D]  # 0x0D: a table b-tree leaf
    assert len(leaves) >= 3
    victim = min(leaves, key=lambda i: abs(i - pages // 2))
    with path.open("r+b") as f:
        f.seek(page * victim)
        f.write(b"\xde\xad\xbe\xef" * (page // 4))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "b"
    d.mkdir(parents=True)
    return d


# -- damaged and foreign files ------------------------------------------------------------
def test_garbage_in_the_middle_is_one_line_naming_repair(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fill(run_dir)
    damage_middle_page(path)
    before = snapshot(path)
    with pytest.raises(UserError, match="repair"):
        summarise(run_dir)
    with pytest.raises(CorruptStoreError, match=f"modtransfer store repair {run_dir}"):
        Store(path).done_ids()  # what `run` and `run --dry-run` read first
    with pytest.raises(CorruptStoreError):
        Store(path).record(make_row(999))  # a writer never touches a damaged file
    assert snapshot(path) == before
    assert cli.main(["status", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "repair" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_repair_keeps_every_readable_row_and_the_damaged_file(run_dir: Path) -> None:
    path = fill(run_dir)
    damage_middle_page(path)
    new, old, copied, lost = repair(run_dir)
    assert new == path and old.exists() and old.name.startswith("results.sqlite.corrupt-")
    assert old.read_bytes()[:16] == b"SQLite format 3\x00"
    assert 0 < copied < N_ROWS and copied + lost <= N_ROWS
    store = Store(path)
    store.check()
    rows = store.rows()
    assert len(rows) == copied
    assert all(r == {**r, "metrics": make_row(int(r["cell_id"][4:]))["metrics"]} for r in rows)
    assert store.meta().get("plan", {"name": "b"}) == {"name": "b"}
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the repaired store takes new rows, and the cells it lost are simply trained again
    missing = next(i for i in range(N_ROWS) if f"cell{i:04d}" not in store.done_ids())
    assert store.claim(f"cell{missing:04d}") and store.record(make_row(missing))
    assert "done" in summarise(run_dir)


def test_text_file_as_store_is_a_user_error_and_is_left_alone(run_dir: Path) -> None:
    path = run_dir / "results.sqlite"
    path.write_text("these are my notes, not a database\n" * 200)
    before = snapshot(path)
    for read in (Store(path).rows, Store(path).meta, Store(path).running, Store(path).done_ids):
        with pytest.raises(UserError, match="not an SQLite database"):
            read()
    with pytest.raises(UserError, match="repair"):
        summarise(run_dir)
    with pytest.raises(UserError):
        Store(path).set_meta("plan", {})
    assert snapshot(path) == before
    new, old, copied, lost = repair(path)
    assert (copied, lost) == (0, 0) and old.read_bytes() == before[0]
    assert Store(new).rows() == [] and Store(new).claim("x")


def test_sqlite_file_without_cells_table_is_not_a_results_store(run_dir: Path) -> None:
    path = run_dir / "results.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    con.close()
    before = snapshot(path)
    with pytest.raises(CorruptStoreError, match="not a results store"):
        Store(path).rows()
    with pytest.raises(CorruptStoreError, match="not a results store"):
        Store(path).claim("x")  # a writer does not add its tables to someone else's database
    assert snapshot(path) == before


def test_undecodable_json_is_an_error_naming_the_cell_and_repair_drops_it(run_dir: Path) -> None:
    """Chosen behaviour: a read raises (a report silently missing a cell would look complete);
    ``repair`` drops the row and counts it as lost."""
    path = fill(run_dir)
    con = sqlite3.connect(path)
    con.execute("UPDATE cells SET metrics = '{\"val_mse\": 0.5' WHERE cell_id = 'cell0007'")
    con.commit()
    con.close()
    with pytest.raises(CorruptStoreError, match=r"cell0007.*repair"):
        Store(path).rows()
    with pytest.raises(UserError, match="repair"):
        summarise(run_dir)
    _, _, copied, lost = repair(run_dir)
    assert (copied, lost) == (N_ROWS - 1, 1)
    assert "cell0007" not in Store(path).done_ids() and len(Store(path).rows()) == N_ROWS - 1


# -- readers never write ------------------------------------------------------------------
def _add_claim(path: Path, cell_id: str, pid: int, proc_start: str | None) -> None:
    con = sqlite3.connect(path)
    cols = {r[1] for r in con.execute("PRAGMA table_info(running)")}
    if "proc_start" in cols:
        con.execute("INSERT INTO running (cell_id, pid, host, started_at, proc_start) VALUES (?, ?, ?, 0, ?)",
                    (cell_id, pid, os.uname().nodename, proc_start))
    else:
        con.execute("INSERT INTO running VALUES (?, ?, ?, 0)", (cell_id, pid, os.uname().nodename))
    con.commit()
    con.close()


@pytest.fixture
def read_only(run_dir: Path) -> Iterator[Path]:
    """A filled store whose file is 444 and folder 555 (restored afterwards for clean-up)."""
    path = fill(run_dir)
    _add_claim(path, "cell9999", os.getpid(), process_start(os.getpid()))
    os.chmod(path, 0o444)
    os.chmod(run_dir, 0o555)
    yield path
    os.chmod(run_dir, 0o755)
    os.chmod(path, 0o644)


def test_read_only_store_reads_and_stays_unchanged(read_only: Path) -> None:
    before = snapshot(read_only)
    store = Store(read_only, readonly=True)
    assert len(store.rows()) == N_ROWS and store.meta() == {"plan": {"name": "b"}}
    assert [r["cell_id"] for r in store.running()] == ["cell9999"]
    assert len(Store(read_only).done_ids()) == N_ROWS  # a writable Store reads read-only too
    text = summarise(read_only.parent)
    assert f"done {N_ROWS}," in text and "running 1" in text
    with pytest.raises(ReadOnlyStoreError):
        store.set_meta("x", 1)
    assert snapshot(read_only) == before
    con = sqlite3.connect(f"{read_only.as_uri()}?mode=ro", uri=True)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # as the writer left it
    con.close()


NOBODY_READER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from modtransfer.run.status import summarise
    from modtransfer.run.store import Store
    p = Path(sys.argv[1])
    s = Store(p, readonly=True)
    print(json.dumps({"rows": len(s.rows()), "meta": s.meta(), "running": len(s.running()),
                      "done": len(Store(p).done_ids()), "status": summarise(p.parent)}))
""")


@pytest.mark.skipif(os.name != "posix" or shutil.which("setpriv") is None, reason="needs setpriv")
def test_store_in_a_folder_the_reader_cannot_write(tmp_path: Path) -> None:
    """A real non-writer: another user (``nobody``) reads a store in a folder it may not write."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user (the chmod test covers non-root runs)")
    top = Path(tempfile.mkdtemp(prefix="store-ro-", dir="/tmp"))
    try:
        run_dir = top / "b"
        run_dir.mkdir()
        path = fill(run_dir)
        os.chmod(top, 0o755)
        os.chmod(path, 0o444)
        os.chmod(run_dir, 0o555)
        before = snapshot(path)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-c", NOBODY_READER, str(path)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (got["rows"], got["running"], got["done"]) == (N_ROWS, 0, N_ROWS)
        assert got["meta"] == {"plan": {"name": "b"}} and f"done {N_ROWS}," in got["status"]
        assert snapshot(path) == before
        assert sorted(p.name for p in run_dir.iterdir()) == ["results.sqlite"]
    finally:
        os.chmod(top / "b", 0o755)
        shutil.rmtree(top)


def test_empty_file_stays_empty_when_read(run_dir: Path) -> None:
    path = run_dir / "results.sqlite"
    path.touch()
    assert "done 0, diverged 0" in summarise(run_dir)
    assert Store(path).rows() == [] and Store(path).meta() == {} and Store(path).done_ids() == set()
    assert path.stat().st_size == 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.sqlite"]


# -- claims ---------------------------------------------------------------------------------
@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_claim_with_live_pid_but_other_start_time_is_stale(run_dir: Path,
                                                            other_process: subprocess.Popen[bytes]) -> None:
    path = fill(run_dir, 1)
    pid = other_process.pid
    real = process_start(pid)
    assert real is not None
    _add_claim(path, "reused", pid, real + "0")  # the pid now belongs to a process started later
    _add_claim(path, "live", pid, real)
    store = Store(path)
    assert [r["cell_id"] for r in store.running()] == ["live"]
    assert store.claim("reused"), "a claim by a reused pid must not block its cell"
    assert not store.claim("live"), "a claim by its still-running process blocks the cell"
    assert {r["cell_id"]: r["pid"] for r in store.running()} == {"live": pid, "reused": os.getpid()}


def test_claims_in_a_store_of_the_old_schema(run_dir: Path, other_process: subprocess.Popen[bytes]) -> None:
    path = run_dir / "results.sqlite"
    fill(run_dir, 1)
    con = sqlite3.connect(path)  # the running table as older versions created it
    con.executescript("DROP TABLE running; CREATE TABLE running (cell_id TEXT PRIMARY KEY, pid INTEGER NOT NULL, "
                      "host TEXT NOT NULL, started_at REAL NOT NULL);")
    con.close()
    _add_claim(path, "old", other_process.pid, None)
    before = snapshot(path)
    assert [r["cell_id"] for r in Store(path, readonly=True).running()] == ["old"]  # judged by pid alone
    assert snapshot(path) == before
    store = Store(path)
    assert not store.claim("old") and store.claim("new")
    assert {r["cell_id"]: r["proc_start"] for r in store.running()} == {"old": None, "new": process_start(os.getpid())}


# -- failed writes ---------------------------------------------------------------------------
def _connect_with(monkeypatch: pytest.MonkeyPatch, factory: type[sqlite3.Connection]) -> None:
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, **kwargs, factory=factory)

    monkeypatch.setattr("modtransfer.run.store_schema.sqlite3.connect", connect)


class _PageLimited(sqlite3.Connection):
    """A connection whose database may not grow: SQLite's own SQLITE_FULL, as on a full disk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pages = self.execute("PRAGMA page_count").fetchone()[0]
        self.execute(f"PRAGMA max_page_count = {max(pages, 1)}")


def test_disk_full_while_recording(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fill(run_dir, 3)
    big = make_row(100)
    big["curve"] = [{"step": s, "train_loss": 1.0} for s in range(5000)]  # needs new pages
    store = Store(path)
    assert store.claim(big["cell_id"])
    with monkeypatch.context() as m:
        _connect_with(m, _PageLimited)
        with pytest.raises(StoreFullError) as info:
            store.record(big)
        store.release(big["cell_id"])  # in a `finally`: it must not hide the error above
    msg = str(info.value)
    assert "full" in msg and "again" in msg and "cannot rollback" not in msg
    assert "cannot rollback" not in repr(info.value.__context__)
    assert big["cell_id"] not in Store(path).done_ids()
    # after freeing space, the rerun trains and records the cell
    assert Store(path).claim(big["cell_id"]) and Store(path).record(big)
    assert len(Store(path).rows()) == 4


class _FullAfterAutoRollback(sqlite3.Connection):
    """SQLITE_FULL after SQLite has already ended the transaction itself (a bare ROLLBACK fails)."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.startswith("INSERT OR IGNORE INTO cells"):
            super().execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


class _InterruptedAfterInsert(sqlite3.Connection):
    """Ctrl-C between the insert and the commit."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.startswith("DELETE FROM running"):
            raise KeyboardInterrupt
        return super().execute(sql, *args)


def test_disk_full_after_sqlite_rolled_back_has_no_cannot_rollback(run_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = fill(run_dir, 2)
    with monkeypatch.context() as m:
        _connect_with(m, _FullAfterAutoRollback)
        with pytest.raises(StoreFullError) as info:
            Store(path).record(make_row(50))
    assert "cannot rollback" not in str(info.value) and "cell0050" in str(info.value)
    assert "cell0050" not in Store(path).done_ids()


def test_ctrl_c_during_the_transaction_records_nothing(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fill(run_dir, 2)
    with monkeypatch.context() as m:
        _connect_with(m, _InterruptedAfterInsert)
        with pytest.raises(KeyboardInterrupt):
            Store(path).record(make_row(60))
    assert "cell0060" not in Store(path).done_ids() and len(Store(path).rows()) == 2


def test_no_wrong_primary_value_is_stored(run_dir: Path) -> None:
    store = Store(run_dir / "results.sqlite")
    diverged = {**make_row(1, status="diverged"), "primary_value": 123.0, "failed_step": 7}
    nan_done = {**make_row(2), "primary_value": float("nan")}
    assert store.record(diverged) and store.record(nan_done)
    rows = {r["cell_id"]: r for r in store.rows()}
    assert rows["cell0001"]["primary_value"] is None and rows["cell0001"]["status"] == "diverged"
    assert rows["cell0002"]["primary_value"] is None and rows["cell0002"]["status"] == "diverged"


def test_cells_table_is_the_row_dataclass(tmp_path: Path) -> None:
    """One schema: the table's columns are Row's fields in order, and a Row for a cell records as is."""
    from modtransfer.core.spec import ModelSpec
    from modtransfer.core.task import Budget
    from modtransfer.run.plan_types import Cell
    from modtransfer.run.row import COLUMNS, Row

    store = Store(tmp_path / "results.sqlite")
    cell = Cell(benchmark="b", variant="baseline", task="regression", seed=3, size="tiny", spec=ModelSpec(),
                task_config={}, budget=Budget())
    assert store.record(Row.for_cell(cell, error="worker died").to_dict())
    con = sqlite3.connect(store.path)
    try:
        assert tuple(r[1] for r in con.execute("PRAGMA table_info(cells)")) == COLUMNS
    finally:
        con.close()
    (row,) = store.rows()
    assert (row["cell_id"], row["status"], row["seed"], row["error"]) == (cell.cell_id, "failed", 3, "worker died")
    assert row["budget"] == Budget().to_dict() and row["primary_value"] is None
