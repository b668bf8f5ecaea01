"""Where in a plugin's code an error was raised: the file, line and function, and the registered
component, variant or task it belongs to (used by the contract suite and by training cells)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def error_line(exc: BaseException) -> str:
    """One line: where in a plugin it was raised (when it was), the exception and its first line."""
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    where = plugin_frame(exc)
    return f"{where}: {message}" if where else message


def _plugin_files() -> dict[Path, list[tuple[str, str, Any]]]:
    """Files holding plugin code -> the registered things each defines, as ``(kind, name, obj)``.

    Registered objects not defined by the package, the files of their own (non-library) base
    classes, and every module loaded with ``--plugin``.
    """
    from modtransfer.core.digest import plugin_entries, plugin_source_files

    files: dict[Path, list[tuple[str, str, Any]]] = {}
    for kind, name, obj in plugin_entries():
        for f in plugin_source_files(obj):
            files.setdefault(f, []).append((kind, name, obj))
    for modname, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if modname.startswith("modtransfer_plugin_") and path:
            files.setdefault(Path(path).resolve(), [])
    return files


def _defines(obj: Any, code: Any, path: Path) -> bool:
    """Whether the code object ``code`` (from ``path``) belongs to ``obj``: a method of the class
    or of one of its plugin base classes, the function itself, or a function nested in it."""
    from modtransfer.core.digest import source_file

    qual = getattr(code, "co_qualname", code.co_name)
    if isinstance(obj, type):
        return any(qual.startswith(c.__qualname__ + ".") for c in obj.__mro__ if source_file(c) == path)
    target = getattr(obj, "__func__", obj)
    own = getattr(target, "__qualname__", None)
    return own is not None and (qual == own or qual.startswith(own + ".<locals>."))


def plugin_frame(exc: BaseException) -> str | None:
    """Where in plugin code ``exc`` was raised, e.g. ``"ffn 'my_ffn' (plugin /x.py:42 in forward)"``.

    The deepest traceback frame in a plugin's file gives the place; the registered component,
    variant or task it belongs to (searched from that frame outwards) gives the interface the
    harness called it through. Chained exceptions are followed (a ``UserError`` raised about a
    plugin's own error still points at it). None when no frame is in plugin code: the error is
    the harness's, or a built-in's.
    """
    files = _plugin_files()
    if not files:
        return None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        hits = []
        tb = current.__traceback__
        while tb is not None:
            path = Path(tb.tb_frame.f_code.co_filename).resolve()
            if path in files:
                hits.append((path, tb.tb_frame.f_code, tb.tb_lineno))
            tb = tb.tb_next
        if hits:
            path, code, line = hits[-1]
            label = next((f"{kind} {name!r} " for p, c, _ in reversed(hits) for kind, name, obj in files[p]
                          if _defines(obj, c, p)), "")
            return f"{label}(plugin {path}:{line} in {code.co_name})"
        current = current.__cause__ or current.__context__
    return None
