"""Plugins: variants, components and tasks from outside the package.

Two ways in: a Python file passed with ``--plugin path/to/file.py``, and installed packages
that declare an entry point in the group ``modtransfer.variants`` (or ``modtransfer.tasks``)
pointing at a module (or a callable) that registers things with the public decorators.
A plugin that fails to import never crashes the CLI with a traceback: ``ls`` reports it by
name and skips it; ``run`` and ``check``, which were asked for that plugin, stop with one line
naming its file and line (exit 2), before anything trains.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from modtransfer.core.errors import UserError
from modtransfer.core.registry import ensure_builtins

GROUPS = ("modtransfer.variants", "modtransfer.tasks")


@dataclass
class PluginProblem:
    name: str
    error: str
    detail: str
    where: str = ""      # file:line inside the plugin where it failed, when known
    explicit: bool = False   # a file named with --plugin (not an entry point)

    def line(self) -> str:
        at = f" at {self.where}" if self.where else ""
        return f"plugin {self.name!r} skipped: {self.error}{at}"


def _where(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame inside ``path`` (or of a syntax error in it)."""
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == path:
        return f"{path}:{exc.lineno}"
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and Path(frame.filename).resolve() == path:
            found = f"{path}:{frame.lineno}"
    return found


PROBLEMS: list[PluginProblem] = []
_loaded_eps = False


def load_plugin_file(path: str | Path, *, strict: bool = True) -> str | None:
    """Import a plugin file by path; returns its module name, or None if it failed to import.

    A missing file is a user error (exit 2) when ``strict``; an import error is recorded in
    :data:`PROBLEMS` and reported, not raised.
    """
    ensure_builtins()
    p = Path(path).expanduser().resolve()
    if not p.is_file() or p.suffix != ".py":
        if strict:
            raise UserError(f"plugin file {str(path)!r} not found or not a .py file; pass --plugin path/to/file.py")
        return None
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
    modname = f"modtransfer_plugin_{p.stem}_{digest}"
    if modname in sys.modules:
        return modname
    spec = importlib.util.spec_from_file_location(modname, p)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    before = _snapshot()
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must not end the CLI
        sys.modules.pop(modname, None)
        _rollback(before)
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SystemExit) else \
            f"it called sys.exit({exc.code!r}) while being imported"
        PROBLEMS.append(PluginProblem(str(path), error, traceback.format_exc(), _where(exc, p), explicit=True))
        return None
    return modname


def _registries() -> list:
    from modtransfer.core.components import COMPONENTS
    from modtransfer.core.task import TASKS
    from modtransfer.core.variant import VARIANTS

    return [*COMPONENTS.values(), VARIANTS, TASKS]


def _snapshot() -> list[set[str]]:
    return [set(r.names()) for r in _registries()]


def _rollback(before: list[set[str]]) -> None:
    """Unregister what a plugin registered before it failed, so nothing half-loaded stays."""
    for registry, names in zip(_registries(), before, strict=True):
        for name in set(registry.names()) - names:
            registry.unregister(name)


def load_entry_points() -> list[str]:
    """Load every installed entry point of the plugin groups (once); returns their names."""
    global _loaded_eps
    if _loaded_eps:
        return []
    _loaded_eps = True
    ensure_builtins()
    names = []
    for group in GROUPS:
        for ep in entry_points(group=group):
            before = _snapshot()
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj()
                names.append(ep.name)
            except Exception as exc:
                _rollback(before)
                PROBLEMS.append(PluginProblem(f"{ep.name} ({ep.value})", f"{type(exc).__name__}: {exc}",
                                              traceback.format_exc()))
    return names


def load_plugins(files: list[str] | None = None, *, entry_points_too: bool = True) -> None:
    if entry_points_too:
        load_entry_points()
    for f in files or []:
        load_plugin_file(f)


def problem_warnings(files: list[str] | None = None) -> list[str]:
    """One warning line per entry point that failed and per failed file of ``files`` (not older calls'
    files); the command line prints them."""
    return [f"warning: {problem.line()}" for problem in PROBLEMS
            if not problem.explicit or files is None or problem.name in files]


def raise_problems(files: list[str]) -> None:
    """For commands that need their plugins: the first of ``files`` that failed, as a :class:`UserError`."""
    for problem in PROBLEMS:
        if problem.explicit and problem.name in files:
            at = problem.where or problem.name
            raise UserError(f"plugin {at}: {problem.error}; fix the plugin or leave out --plugin {problem.name}")
