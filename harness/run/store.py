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

from modtransfer.run.store_claims import StoreClaims
from modtransfer.run.store_reads import StoreReads
from modtransfer.run.store_writes import StoreWrites


class Store(StoreWrites, StoreClaims, StoreReads):
    """A results store at ``path`` (created on first write): its connections
    (:mod:`~modtransfer.run.store_schema`), claims (:mod:`~modtransfer.run.store_claims`), reads
    (:mod:`~modtransfer.run.store_reads`) and writes (:mod:`~modtransfer.run.store_writes`).

    Reads always use a read-only connection; ``readonly=True`` also refuses every write, for
    commands that only look (``status``, ``report``). The file is checked once per object.
    """
