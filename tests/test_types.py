"""The type checker (mypy) runs clean on harness/: the seams between layers are typed, and CI keeps them so.

harness/ is installed as ``modtransfer`` through pyproject's package-dir mapping, which mypy cannot follow,
so :func:`link_tree` lays a folder named ``modtransfer`` of links to harness/'s entries and to the zoo and
reports folders, and mypy reads it through ``MYPYPATH``. What is checked, and how, is pyproject's
``[tool.mypy]``. Run it by hand with ``.venv/bin/python tests/test_types.py`` (prints mypy's report).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: sub-packages that pyproject's package-dir maps into modtransfer from outside harness/
MAPPED = ("variants", "tasks", "reports")
WORK = ROOT / ".cache" / "mypy"


def link_tree(base: Path) -> Path:
    """``base/modtransfer``: a link per harness/ entry plus the mapped folders; returns ``base``."""
    pkg = base / "modtransfer"
    pkg.mkdir(parents=True, exist_ok=True)
    want = {p.name: p for p in (ROOT / "harness").iterdir() if p.name != "__pycache__"}
    want.update({name: ROOT / name for name in MAPPED})
    for link in pkg.iterdir():
        if link.name not in want or not link.is_symlink() or link.resolve() != want[link.name].resolve():
            link.unlink()
    for name, target in want.items():
        if not (pkg / name).is_symlink():
            (pkg / name).symlink_to(target, target_is_directory=target.is_dir())
    return base


def run_mypy() -> subprocess.CompletedProcess[str]:
    src = link_tree(WORK / "src")
    env = {**os.environ, "MYPYPATH": str(src)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--cache-dir", str(WORK / "cache"), "--python-executable", sys.executable]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_link_tree_maps_every_harness_entry(tmp_path: Path) -> None:
    pkg = link_tree(tmp_path) / "modtransfer"
    assert (pkg / "core" / "task.py").resolve() == (ROOT / "harness" / "core" / "task.py").resolve()
    assert (pkg / "variants").resolve() == (ROOT / "variants").resolve()
    (pkg / "stale.py").symlink_to(ROOT / "harness" / "__init__.py")
    link_tree(tmp_path)
    assert not (pkg / "stale.py").exists(), "a link to nothing harness/ holds is removed"


def test_mypy_is_clean_on_harness() -> None:
    done = run_mypy()
    report = (done.stdout + done.stderr).strip()
    assert "No module named mypy" not in report, "mypy is not installed: pip install -e '.[test]'"
    assert done.returncode == 0 and "Success" in report, "mypy found errors in harness/:\n" + report


if __name__ == "__main__":
    result = run_mypy()
    print(result.stdout + result.stderr, end="")
    sys.exit(result.returncode)
