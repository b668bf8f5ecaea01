"""Regenerate the README's variant table from the registry, so the two cannot drift.

    python -m modtransfer.readme          # rewrite the section in README.md
    python -m modtransfer.readme --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

START, END = "<!-- variants:start -->", "<!-- variants:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def section() -> str:
    from .listing import list_variants

    return list_variants(None, size="small", markdown=True, counts=True)


def render(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README} has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    from .components import ensure_builtin_components

    ensure_builtin_components()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md variant table is out of date: run python -m modtransfer.readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
