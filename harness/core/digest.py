"""The plugin code behind registered objects: which files, and a digest of them.

:func:`code_digest` hashes the plugin code a variant expression uses (nothing for built-ins):
part of a cell's identity, and the key of the gate's cache. :func:`plugin_entries` lists what
was registered from outside the package, and :func:`plugin_source_files` where it lives.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import sysconfig
from pathlib import Path
from typing import Any

from modtransfer.core.components import COMPONENTS
from modtransfer.core.profiles import IMPLEMENTATIONS
from modtransfer.core.registry import Entry, Registry, is_builtin
from modtransfer.core.spec import SLOTS, ModelSpec
from modtransfer.core.task import TASKS
from modtransfer.core.variant import VARIANTS, parse_variant, resolve


def source_file(obj: Any) -> Path | None:
    """The resolved file that defines ``obj``, or None (defined interactively, or a C object)."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(obj))
    except (TypeError, OSError):
        return None
    return Path(path).resolve() if path else None


@functools.cache
def _library_roots() -> tuple[Path, ...]:
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple({Path(p).resolve() for n in names if (p := sysconfig.get_paths().get(n))})


def _is_library(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in _library_roots())


def plugin_source_files(obj: Any) -> list[Path]:
    """The files of plugin code behind a registered object: its own file and those of its base
    classes, leaving out the package and installed libraries (torch's ``nn.Module``)."""
    classes = [c for c in getattr(obj, "__mro__", ()) if not is_builtin(c)] or [obj]
    files = {f for f in map(source_file, classes) if f is not None}
    return sorted(f for f in files if not _is_library(f))


def _registries() -> list[tuple[str, Registry[Any]]]:
    return [*COMPONENTS.items(), ("variant", VARIANTS), ("task", TASKS), ("implementation", IMPLEMENTATIONS)]


def plugin_entries() -> list[tuple[str, str, Any]]:
    """``(kind, name, object)`` of everything registered from outside the package.

    ``kind`` is the slot of a component (``"ffn"``), or ``"variant"``, ``"task"``,
    ``"implementation"``: the interface through which the harness calls the object. Plugin
    files, entry points, tests and scripts count; the built-ins (even ``torch`` functions the
    package registers, such as ``relu``) do not.
    """
    return [(kind, e.name, e.obj) for kind, reg in _registries() for e in reg.list() if not e.builtin]


def _code_text(obj: Any) -> str:
    """The code behind ``obj``: every plugin file defining it or one of its base classes.

    Whole files, not just the object's lines: module constants and helper functions change
    what a component computes too. Files are compared as syntax trees, so editing comments or
    layout does not change the digest; anything else does. An object without a readable
    plugin file (a library function registered under a new name) counts by its import path.
    """
    texts = []
    for f in plugin_source_files(obj):
        try:
            source = f.read_text(encoding="utf-8")
        except OSError:
            texts.append(f"{f}: unreadable")
            continue
        try:
            texts.append(ast.dump(ast.parse(source)))
        except SyntaxError:
            texts.append(source)
    if texts:
        return "\n".join(texts)
    try:
        return inspect.getsource(obj)
    except (TypeError, OSError):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def code_digest(variant_expr: str, spec: ModelSpec | None = None, task: str | None = None) -> str:
    """A hash of the plugin code a variant uses; ``""`` when everything it uses is built in.

    Covers the variant function of every part, the component of every slot of the resolved
    spec (``spec``, else the expression applied to a default :class:`ModelSpec`), its
    implementation profile, and the task ``task`` when given, keeping those registered from
    outside the package (plugin files, entry points, a plugin that overrides a built-in name).
    Built-ins contribute nothing, so the ids of built-in cells never change; editing a plugin's
    code changes the digest, so results of the old code are not taken for the new.
    """
    used: list[tuple[str, Entry[Any]]] = [("variant", VARIANTS.entry(p.name)) for p in parse_variant(variant_expr)]
    resolved = spec
    if resolved is None:
        try:
            resolved = resolve(variant_expr, ModelSpec()).spec
        except Exception:  # noqa: BLE001 - a variant that cannot resolve: its own code is what counts
            resolved = None
    if resolved is not None:
        used += [(slot, COMPONENTS[slot].entry(getattr(resolved, slot))) for slot in SLOTS
                 if getattr(resolved, slot) in COMPONENTS[slot]]
        if resolved.implementation in IMPLEMENTATIONS:
            used.append(("implementation", IMPLEMENTATIONS.entry(resolved.implementation)))
    if task is not None:
        used.append(("task", TASKS.entry(task)))
    plugin = sorted({(kind, e.name): e.obj for kind, e in used if not e.builtin}.items(), key=lambda kv: kv[0])
    if not plugin:
        return ""
    h = hashlib.sha256()
    for (kind, name), obj in plugin:
        h.update(f"{kind}:{name}\n".encode())
        h.update(_code_text(obj).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
