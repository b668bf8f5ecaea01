"""Writing a folder of results atomically: build it beside its final place, then swap it in."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_folder(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` to ``final``; an earlier folder there is removed only after the rename
    succeeded (and put back if it fails), so a reader never sees a half-written folder."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{tmp.name}")
        final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
