"""A small generic registry used for components, variants and tasks.

Decorator registration keyed by name; glob listing; "did you mean" on unknown names; a
different object under a taken name is rejected naming both origins (re-registering the same
object is harmless, so re-importing a plugin file is safe).

Built-ins load on first use: the package installs a loader (:func:`set_builtin_loader`, the
import of the built-in component, variant and task modules) that every registry calls before
it is read, so ``VARIANTS.names()`` in a fresh process lists the built-ins without anyone
calling ``modtransfer.builtins.load_builtins()`` first. Importing ``modtransfer`` alone stays light
(no torch): nothing is loaded until a registry is read, or until an outside module registers
something (the built-ins go first, so a plugin's ``override=True`` replaces them and a clash
with a built-in name is reported against the plugin).
"""

from __future__ import annotations

import builtins
import fnmatch
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Generic, TypeVar

from modtransfer.core.errors import ConflictError, UnknownNameError, did_you_mean

T = TypeVar("T")

_builtin_loader: Callable[[], None] | None = None
_builtins_loaded = False
_loading = 0   # > 0 while the built-ins are being imported


def set_builtin_loader(loader: Callable[[], None] | None) -> None:
    """Install the function that registers the built-ins (called once, on a registry's first use)."""
    global _builtin_loader, _builtins_loaded
    _builtin_loader, _builtins_loaded = loader, False


@contextmanager
def loading_builtins() -> Iterator[None]:
    """Marks what registers inside it as built in (``Entry.builtin``); the loader runs in one."""
    global _loading
    _loading += 1
    try:
        yield
    finally:
        _loading -= 1


def ensure_builtins() -> None:
    """Run the installed built-in loader, once (a no-op when none is installed)."""
    _load_builtins()


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded or _builtin_loader is None:
        return
    _builtins_loaded = True  # first, so that registries read while the built-ins import do not recurse
    _builtin_loader()


def is_builtin(obj: Any) -> bool:
    """Whether ``obj`` was defined inside the modtransfer package (tested in CI, versioned with it)."""
    module = getattr(obj, "__module__", None) or ""
    return module == "modtransfer" or module.startswith("modtransfer.")


#: Modules whose functions only pass a registration on (the decorators); the module calling them registers.
_HELPERS = frozenset({"modtransfer.core.registry", "modtransfer.core.components", "modtransfer.core.variant",
                      "modtransfer.core.task", "modtransfer.core.profiles"})


def _caller_module() -> str:
    """The module that asked for the registration (the first frame outside the decorators)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in _HELPERS:
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def _registering_builtin(obj: Any) -> bool:
    """A registration belongs to the package: while the built-ins load, before the package has
    installed its loader (its own ``__init__``), of an object the package defines, or made by
    one of its modules (``torch.nn.functional.relu`` registered by the activations module)."""
    if _loading or _builtin_loader is None or is_builtin(obj):
        return True
    caller = _caller_module()
    return caller == "modtransfer" or caller.startswith("modtransfer.")


def origin_of(obj: Any) -> str:
    """Where an object was defined, as ``module.qualname (file:line)``."""
    module = getattr(obj, "__module__", "?")
    qual = getattr(obj, "__qualname__", type(obj).__qualname__)
    try:
        target = inspect.unwrap(obj)
        path = inspect.getsourcefile(target) or "?"
        line = inspect.getsourcelines(target)[1]
        return f"{module}.{qual} ({path}:{line})"
    except (TypeError, OSError):
        return f"{module}.{qual}"


def _same_definition(a: Any, b: Any) -> bool:
    """True when two objects are the same, or the same definition loaded twice."""
    if a is b:
        return True
    try:
        return origin_of(a) == origin_of(b) and inspect.getsource(a) == inspect.getsource(b)
    except (TypeError, OSError):
        return False


@dataclass
class Entry(Generic[T]):
    """One registered object and what is known about it."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)
    builtin: bool = False   # registered by the package itself (not a plugin, a test or a script)

    @property
    def origin(self) -> str:
        return origin_of(self.obj)


class Registry(Generic[T]):
    """Name -> object, with metadata, globs and helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, override: bool = False, **meta: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        ``override=True`` replaces a different object already registered under ``name`` (the
        replaced origin is kept in the entry's ``overrides`` meta); without it that is an error.
        """
        if obj is None:
            def decorator(o: T) -> T:
                self.register(name, o, override=override, **meta)
                return o
            return decorator
        builtin = _registering_builtin(obj)
        if not builtin:
            _load_builtins()
        if not name or not isinstance(name, str) or any(c in name for c in "+,*?[] "):
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string without '+,*?[] '")
        old = self._entries.get(name)
        if old is not None:
            if _same_definition(old.obj, obj):
                old.obj, old.meta = obj, meta
                return obj
            if override:
                self._entries[name] = Entry(name, obj, {**meta, "overrides": old.origin}, builtin)
                return obj
            raise ConflictError(
                f"{self.kind} {name!r} is registered twice: by {old.origin} and by {origin_of(obj)}; "
                "rename one of them (or pass override=True to replace it on purpose)"
            )
        self._entries[name] = Entry(name, obj, meta, builtin)
        return obj

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        _load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; "
                f"`modtransfer ls {self.kind}s` lists them"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        _load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        _load_builtins()
        return iter(self._entries)

    def __len__(self) -> int:
        _load_builtins()
        return len(self._entries)

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, filtered by a glob (``"*glu*"``)."""
        _load_builtins()
        if pattern is None or pattern == "*":
            return list(self._entries)
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def list(self, pattern: str | None = None) -> builtins.list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]

    def select(self, patterns: str | builtins.list[str]) -> builtins.list[str]:
        """Expand a comma-separated list of names and globs; an unmatched item is an error."""
        items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
        out: list[str] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if any(c in item for c in "*?["):
                hits = self.names(item)
                if not hits:
                    raise UnknownNameError(f"no {self.kind} matches {item!r}; `modtransfer ls {self.kind}s` lists them")
            else:
                self.entry(item)
                hits = [item]
            out.extend(h for h in hits if h not in out)
        return out

