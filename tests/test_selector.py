"""Selector variants (:func:`modtransfer.core.variant.selector`) and the built-in registry they fill.

``tests/data/variant_registry.json`` was written from the registry before the one-line variants
moved to :func:`selector`: every built-in variant in registration order, its metadata, and what
it changes in four specs (the default, two size presets, and one whose every slot is set to a
marker, so that writing the baseline's value and leaving a slot alone differ). The registry must
still read the same; the spec stands for the cell ids, which hash it.

Regenerate (only when a variant is added or changed on purpose):
``.venv/bin/python tests/test_selector.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from modtransfer.builtins import load_builtins
from modtransfer.core.sizes import size_preset
from modtransfer.core.spec import SLOTS, ModelSpec
from modtransfer.core.variant import VARIANTS

DUMP = Path(__file__).parent / "data" / "variant_registry.json"
BASES = ("default", "tiny", "base", "marked")


def _base(name: str) -> ModelSpec:
    """A baseline spec; ``marked``: tiny with every slot and option set to a value no variant sets,
    so a variant that leaves a slot alone and one that writes the baseline's value differ."""
    if name == "default":
        return ModelSpec()
    if name == "marked":
        return size_preset("tiny").replace(**{slot: f"{slot}_marker" for slot in SLOTS}).with_options(marker=1)
    return size_preset(name)


def _produced(fn: Any, base: ModelSpec) -> Any:
    """What a variant (default parameters) changes in ``base``'s serialised form: the fields of
    ``to_dict`` (which the cell id hashes) that differ, a dropped one as None; or the error it raises."""
    try:
        after = fn(base).to_dict()
    except Exception as exc:  # noqa: BLE001 - the error is part of what the variant does
        return f"{type(exc).__name__}: {exc}"
    before = base.to_dict()
    return {k: after.get(k) for k in sorted({*before, *after}) if before.get(k, ...) != after.get(k, ...)}


def snapshot() -> list[dict[str, Any]]:
    """Every built-in variant in registry order, as JSON would read it back."""
    load_builtins()
    rows = []
    for entry in VARIANTS.list():
        if not entry.builtin:
            continue
        meta = entry.meta
        rows.append({
            "name": entry.name, "slot": meta["slot"], "paper": meta["paper"], "description": meta["description"],
            "matches": meta["matches"], "requires": sorted(meta["requires"]),
            "requires_any": sorted(meta["requires_any"]),
            "spec": {b: _produced(entry.obj, _base(b)) for b in BASES},
        })
    return json.loads(json.dumps(rows, sort_keys=True, default=str))



def test_registry_matches_the_dump() -> None:
    """Same built-in variants, same order, same metadata, same spec from every base."""
    want = json.loads(DUMP.read_text())
    got = snapshot()
    assert [r["name"] for r in got] == [r["name"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g == w, g["name"]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    DUMP.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {DUMP}")
