"""Issue 24: stores this version cannot use, a healthy store given to ``store repair``, and a store
that stays locked.

* a foreign store (an SQLite ``cells`` table without modtransfer's columns) or an older one (a
  column missing): every command that opens it prints one line naming the file, what is missing
  and the way out, exits 2, and leaves the file as it was;
* ``store repair`` on a healthy store says so and changes nothing;
* a store another process keeps locked: the writer waits, retries, then says so in one line
  naming that process (from the claims table).
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.run.store import Store
from modtransfer.run.store_repair import repair
from modtransfer.run.store_schema import ForeignStoreError, StoreBusyError
from tests.test_store_robust import fill, make_row, snapshot

PLAN = {"name": "b", "size": "tiny", "seeds": 1, "variants": [], "tasks": ["regression"],
        "spec": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32},
        "task_budget": {"regression": {"steps": 2, "batch_size": 4, "eval_batches": 1}}, "wandb": {"mode": "disabled"}}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "b"
    d.mkdir(parents=True)
    return d


def _commands(run_dir: Path, plan: Path) -> list[list[str]]:
    """Every command that opens a run folder's store."""
    runs = str(run_dir.parent)
    return [["status", str(run_dir)], ["report", str(run_dir)], ["run", str(plan), "--runs-dir", runs, "--dry-run"],
            ["run", str(plan), "--runs-dir", runs, "--no-report"]]


def _one_line_each(run_dir: Path, capsys: pytest.CaptureFixture[str], *words: str) -> None:
    plan = run_dir.parent.parent / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    path = run_dir / "results.sqlite"
    before = snapshot(path)
    for argv in _commands(run_dir, plan):
        code = cli.main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2, (argv, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
        for word in (str(path), *words):
            assert word in lines[0], (argv, word, lines[0])
        assert snapshot(path) == before, argv
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["results.sqlite"]


def test_foreign_store_is_one_line_naming_what_is_missing(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hostile suite's case: status used to print ``no such column: finished_at`` with a traceback."""
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        con.execute("CREATE TABLE cells (cell_id TEXT PRIMARY KEY, status TEXT, score REAL)")
        con.execute("INSERT INTO cells VALUES ('a', 'ok', 1.0)")
    con.close()
    _one_line_each(run_dir, capsys, "not a results store", "'cells' lacks column(s) benchmark",
                   "modtransfer store repair", "fresh run folder")


def test_older_store_names_the_missing_column(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fill(run_dir, 3)
    with sqlite3.connect(path) as con:
        con.execute("ALTER TABLE cells DROP COLUMN startup_s")  # as if written before the column existed
    con.close()
    with pytest.raises(ForeignStoreError, match="lacks column"):
        Store(path).record(make_row(99))
    _one_line_each(run_dir, capsys, "lacks column(s) startup_s;", "store repair")
    # the way out the line names works: repair keeps every row (the missing column empty)
    result = repair(run_dir)
    assert not result.healthy and (result.copied, result.lost) == (3, 0) and result.old_path.exists()
    rows = Store(path).rows()
    assert len(rows) == 3 and all(r["startup_s"] is None for r in rows)


def test_repair_of_a_foreign_store_keeps_it_aside(run_dir: Path) -> None:
    path = run_dir / "results.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE cells (cell_id TEXT PRIMARY KEY, note TEXT)")
        con.execute("CREATE TABLE running (cell_id TEXT, who TEXT)")  # no pid or host to judge a claim by
        con.execute("INSERT INTO cells VALUES ('a', 'mine')")
    con.close()
    before = path.read_bytes()
    result = repair(run_dir)
    assert (result.copied, result.lost, result.healthy) == (0, 1, False)
    assert result.old_path.read_bytes() == before
    assert Store(path).rows() == [] and Store(path).claim("x")


def test_repair_of_a_healthy_store_changes_nothing(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fill(run_dir, 5)
    before = snapshot(path)
    assert cli.main(["store", "repair", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path} is healthy (5 cell(s), every row readable): nothing to repair, nothing changed"
    assert err == ""
    assert snapshot(path) == before
    assert not [p for p in run_dir.iterdir() if "corrupt" in p.name or "repair" in p.name]
    wal = run_dir / "results.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # nothing written, not even to the journal
    assert len(Store(path).rows()) == 5


# -- a store that stays locked --------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import os, socket, sqlite3, sys, time
    from modtransfer.run.store_claims import process_start
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("INSERT INTO running VALUES ('cell-of-the-other-run', ?, ?, ?, ?)",
                (os.getpid(), socket.gethostname(), time.time(), process_start(os.getpid())))
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def locked_store(run_dir: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A store that another process (with a claim on one cell) holds an exclusive lock on."""
    path = fill(run_dir, 2)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield path, proc
    proc.kill()
    proc.wait()


def test_a_store_that_stays_locked_is_one_line_naming_the_holder(locked_store: tuple[Path, subprocess.Popen[str]],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, proc = locked_store
    monkeypatch.setattr(Store, "busy_timeout_s", 0.1)
    monkeypatch.setattr(Store, "patience_s", 0.5)
    store = Store(path)
    for write in (lambda: store.record(make_row(7)), lambda: store.claim("cell0007"),
                  lambda: store.set_meta("plan", {})):
        with pytest.raises(StoreBusyError) as info:
            write()
        text = str(info.value)
        assert "\n" not in text and str(path) in text and "stayed locked" in text
        assert f"pid {proc.pid} on {socket.gethostname()}" in text and "cell-of-the-other-run" in text
    assert len(store.rows()) == 2  # readers are not blocked by a writer (WAL)
    proc.kill()
    proc.wait()
    assert store.record(make_row(7)), "once the other process is gone, the same write goes through"


def test_a_lock_released_while_waiting_is_waited_for(locked_store: tuple[Path, subprocess.Popen[str]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite gives up after its busy timeout; the store retries (with backoff) until its patience runs out."""
    path, proc = locked_store
    monkeypatch.setattr(Store, "busy_timeout_s", 0.05)
    monkeypatch.setattr(Store, "patience_s", 60.0)
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1.0); os.kill({proc.pid}, 9)"])
    try:
        assert Store(path).record(make_row(8))
    finally:
        killer.wait()
    assert "cell0008" in Store(path).done_ids()
