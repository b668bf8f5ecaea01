"""A cache of ``modtransfer ls`` output, so a repeated listing never imports torch.

The listing is a pure function of the code (every module of the package, the plugin files,
the installed entry points), the size presets and the arguments; the key is built from
file sizes and modification times and the entry points' declarations, which costs a few
milliseconds, whereas building the registries imports torch (seconds on a small machine).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from modtransfer.core.task import default_cache_dir

_PACKAGES = ("modtransfer", "modtransfer.variants", "modtransfer.tasks", "modtransfer.configs")
_KEEP = 32


def _package_files() -> list[Path]:
    files: list[Path] = []
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            root = Path(folder)
            files.extend(root.rglob("*.py"))
            files.extend(root.glob("sizes/*.yaml"))
    return files


def stat_digest(files: Iterable[Path], h: Any = None) -> Any:
    """Fold each file's path, size and modification time into a sha256 (cheap: no reading)."""
    h = h or hashlib.sha256()
    for f in sorted(set(files)):
        try:
            st = f.stat()
            h.update(f"{f}:{st.st_mtime_ns}:{st.st_size};".encode())
        except OSError:
            h.update(f"{f}:missing;".encode())
    return h


def listing_key(args: dict[str, Any], plugins: list[str]) -> str:
    h = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode())
    stat_digest([*_package_files(), *(Path(p).resolve() for p in plugins)], h)
    for group in ("modtransfer.variants", "modtransfer.tasks"):
        for ep in entry_points(group=group):
            dist = getattr(ep, "dist", None)
            h.update(f"{group}:{ep.name}={ep.value}@{getattr(dist, 'version', '')};".encode())
    return h.hexdigest()[:24]


def _path() -> Path:
    return default_cache_dir() / "listing.json"


def lookup(key: str) -> dict[str, str] | None:
    try:
        return json.loads(_path().read_text()).get(key)
    except (OSError, ValueError):
        return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON-object cache file; empty when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any], keep: int) -> None:
    """Atomically, keeping the ``keep`` newest entries; a cache that cannot be written is only slower."""
    data = dict(list(data.items())[-keep:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def save(key: str, out: str, err: str) -> None:
    path = _path()
    data = read_json(path)
    data.pop(key, None)
    data[key] = {"out": out, "err": err}
    write_json(path, data, _KEEP)
