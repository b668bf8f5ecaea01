"""Regenerate the README's variant table and slot-interface table from the code, so they cannot drift.

    python -m modtransfer.bench.readme          # rewrite the section in README.md
    python -m modtransfer.bench.readme --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

START, END = "<!-- variants:start -->", "<!-- variants:end -->"
SLOTS_START, SLOTS_END = "<!-- slots:start -->", "<!-- slots:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    from modtransfer.cli.listing import list_variants

    return list_variants(None, size="small", markdown=True, counts=True)


def slots_section() -> str:
    """One row per slot: the call a component must answer to, and its Protocol's docstring."""
    import inspect

    from modtransfer.core.protocols import SLOT_PROTOCOLS

    rows = ["| slot | a component is called as | contract |", "|---|---|---|"]
    for slot, proto in SLOT_PROTOCOLS.items():
        sig = str(inspect.signature(proto.__call__)).replace("(self, ", "(").replace(", /", "").replace("'", "")
        doc = " ".join((proto.__doc__ or "").split()).replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{slot}` | `{sig}` | {doc} |")
    return "\n".join(rows)


def _replace(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{README} has no {start} ... {end} section")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(text: str) -> str:
    text = _replace(text, START, END, section())
    return _replace(text, SLOTS_START, SLOTS_END, slots_section()) if SLOTS_START in text else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    from modtransfer.builtins import load_builtins

    load_builtins()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md variant or slot table is out of date: run python -m modtransfer.bench.readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
