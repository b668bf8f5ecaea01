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

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from modtransfer.builtins import load_builtins
from modtransfer.core import variant as variant_module
from modtransfer.core.digest import code_digest
from modtransfer.core.errors import ConflictError, UserError
from modtransfer.core.sizes import size_preset
from modtransfer.core.spec import SLOTS, ModelSpec
from modtransfer.core.variant import VARIANTS, resolve, selector

DUMP = Path(__file__).parent / "data" / "variant_registry.json"
ZOO = Path(__file__).resolve().parent.parent / "variants"
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



# -- every one-line field setter in the zoo is a selector -------------------------------------------
def _sets_fields_only(body: ast.expr) -> bool:
    """``spec.replace(...)``, ``spec.with_options(...)`` or the one then the other."""
    node = body
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "with_options":
        node = node.func.value
        if isinstance(node, ast.Name) and node.id == "spec":
            return True
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "spec")


def _field_setters(tree: ast.Module) -> list[str]:
    """Functions decorated with ``register_variant`` that take only ``spec`` and return it with fields set."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        if not any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_variant" for d in node.decorator_list):
            continue
        args = node.args
        if [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs] != ["spec"] or args.vararg or args.kwarg:
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None \
                and _sets_fields_only(body[0].value):
            found.append(node.name)
    return found


def test_the_scan_finds_a_decorated_field_setter() -> None:
    tree = ast.parse(
        "@register_variant('a', slot='norm')\ndef a(spec):\n    \"\"\"doc\"\"\"\n    return spec.replace(norm='x')\n"
        "@register_variant('b', slot='norm')\ndef b(spec, k=1):\n    return spec.replace(norm='x')\n"
        "@register_variant('c', slot='shape')\ndef c(spec):\n    return spec.with_options(stack='c')\n"
    )
    assert _field_setters(tree) == ["a", "c"]


def test_every_one_line_field_setter_in_the_zoo_is_a_selector() -> None:
    """A decorated variant that only sets fields is written with ``selector``."""
    files = sorted(ZOO.rglob("*.py"))
    assert len(files) > 10
    setters = [f"{p.name}:{n}" for p in files for n in _field_setters(ast.parse(p.read_text(encoding="utf-8")))]
    assert setters == [], "write these with modtransfer.core.variant.selector"


def test_builtin_variants_are_selectors_or_module_functions() -> None:
    """No family invents its own variant factory: a built-in variant is a selector or a function
    defined at the top of its module, under its own name."""
    load_builtins()
    made, selectors = [], 0
    for entry in VARIANTS.list():
        fn = entry.obj
        if not entry.builtin:
            continue
        if fn.__code__.co_filename == variant_module.__file__ and fn.__code__.co_name == "select":
            selectors += 1
        elif getattr(sys.modules[fn.__module__], fn.__name__, None) is not fn:
            made.append(entry.name)
    assert made == []
    assert selectors >= 50  # 58 when written


def test_builtin_selectors_belong_to_their_modules() -> None:
    load_builtins()
    for name, module in (("gelu", "activations"), ("swiglu", "ffn"), ("rmsnorm", "norms"),
                         ("synthesizer_random", "synthesizer")):
        entry = VARIANTS.entry(name)
        assert entry.builtin, name
        assert entry.obj.__module__ == f"modtransfer.variants.{module}", name
        assert code_digest(name) == "", name
    assert VARIANTS.get("depth_x1.5").__name__ == "depth_x1_5"


# -- the helper -------------------------------------------------------------------------------------
def test_selector_sets_constant_and_derived_fields(temporary_plugin: Any) -> None:
    fn = selector("t_sel.half-ffn", slot="ffn", description="Half the FFN, RMSNorm, a marker option.",
                  paper="nobody 2024", norm="rmsnorm", d_ff=lambda spec: spec.d_ff // 2,
                  options={"t_sel_from": lambda spec: spec.norm, "t_sel_k": 3})
    entry = VARIANTS.entry("t_sel.half-ffn")
    assert entry.obj is fn and not entry.builtin  # registered by this module, a plugin's way
    assert fn.__name__ == "t_sel_half_ffn" and fn.__module__ == __name__
    assert fn.__doc__ == entry.meta["description"] == "Half the FFN, RMSNorm, a marker option."
    assert entry.meta["slot"] == "ffn" and entry.meta["paper"] == "nobody 2024"
    base = ModelSpec(d_ff=256, norm="layernorm").with_options(other=1)
    out = fn(base)
    # derived values read the incoming spec (norm was layernorm), the other options stay
    assert (out.d_ff, out.norm, dict(out.extra)) == (128, "rmsnorm", {"other": 1, "t_sel_from": "layernorm", "t_sel_k": 3})
    assert resolve("t_sel.half-ffn", ModelSpec()).spec.d_ff == ModelSpec().d_ff // 2
    assert code_digest("t_sel.half-ffn") != ""  # not built in: the cell id carries a code digest


def test_selector_is_a_variant_like_the_others(temporary_plugin: Any) -> None:
    with pytest.raises(UserError, match=r"gelu\(k=1\)"):
        resolve("gelu(k=1)", ModelSpec())  # a selector takes no parameters
    with pytest.raises(ConflictError, match="'gelu'.*'swish'.*activation"):
        resolve("gelu+swish", ModelSpec())
    assert resolve("rmsnorm+gelu", ModelSpec()).spec.diff(ModelSpec()).keys() == {"norm", "activation"}
    # the same selector registered again (a plugin file imported twice) is harmless
    for _ in range(2):
        selector("t_sel_twice", slot="norm", description="twice", norm="rmsnorm")
    # another module's selector under a built-in name is refused (override=True would replace it)
    builtin = VARIANTS.get("gelu")
    with pytest.raises(ConflictError, match="'gelu' is registered twice"):
        selector("gelu", slot="activation", description="mine", activation="swish")
    assert VARIANTS.get("gelu") is builtin


@pytest.mark.parametrize(("fields", "problem"), [
    ({"activaton": "gelu"}, "has no field 'activaton'"),
    ({"extra": {"a": 1}}, "options="),
    ({}, "at least one field"),
])
def test_selector_refuses_what_it_cannot_set(temporary_plugin: Any, fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        selector("t_sel_bad", slot="activation", description="bad", **fields)
    assert "t_sel_bad" not in VARIANTS


def test_a_plugin_file_writes_selectors_too(tmp_path: Path, temporary_plugin: Any) -> None:
    path = tmp_path / "t_sel_plugin.py"
    path.write_text(
        "from modtransfer import register_component, selector\n\n"
        "register_component('activation', 't_sel_cube')(lambda x: x * x * x)\n"
        "selector('t_sel_cube', slot='activation', description='FFN activation x^3.', activation='t_sel_cube')\n"
    )
    module = temporary_plugin(path)
    assert module is not None
    entry = VARIANTS.entry("t_sel_cube")
    assert not entry.builtin and entry.obj.__module__ == module
    assert resolve("t_sel_cube", ModelSpec()).spec.activation == "t_sel_cube"
    assert code_digest("t_sel_cube") != ""
    first = entry.obj
    sys.modules.pop(module)
    assert temporary_plugin(path) == module  # imported again: the same definitions, no conflict
    assert VARIANTS.get("t_sel_cube") is not first


def test_selector_needs_a_description(temporary_plugin: Any) -> None:
    with pytest.raises(ValueError, match="description"):
        selector("t_sel_bad", slot="activation", description=" ", activation="gelu")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    DUMP.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {DUMP}")
