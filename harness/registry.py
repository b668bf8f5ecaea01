"""A small generic registry used for components, variants and tasks.

Decorator registration keyed by name; glob listing; "did you mean" on unknown names; a
different object under a taken name is rejected naming both origins (re-registering the same
object is harmless, so re-importing a plugin file is safe).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConflictError, UnknownNameError, did_you_mean

T = TypeVar("T")


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
        if not name or not isinstance(name, str) or any(c in name for c in "+,*?[] "):
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string without '+,*?[] '")
        old = self._entries.get(name)
        if old is not None:
            if _same_definition(old.obj, obj):
                old.obj, old.meta = obj, meta
                return obj
            if override:
                self._entries[name] = Entry(name, obj, {**meta, "overrides": old.origin})
                return obj
            raise ConflictError(
                f"{self.kind} {name!r} is registered twice: by {old.origin} and by {origin_of(obj)}; "
                "rename one of them (or pass override=True to replace it on purpose)"
            )
        self._entries[name] = Entry(name, obj, meta)
        return obj

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
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
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, filtered by a glob (``"*glu*"``)."""
        if pattern is None or pattern == "*":
            return list(self._entries)
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def list(self, pattern: str | None = None) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]

    def select(self, patterns: str | list[str]) -> list[str]:
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


Factory = Callable[..., Any]
