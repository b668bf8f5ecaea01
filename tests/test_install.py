"""Issue 24: a quiet install. The wheel builds without a single warning, and it carries every plan under
``configs/`` and the reference CSVs under ``reports/data/`` (package data a newcomer's ``pip install``
must not drop).

The wheel is built from a copy of the tracked files (a checkout's stale ``build/`` folder or other
engineers' untracked files cannot leak into it), without build isolation (setuptools from this
environment: no download).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", pattern], cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.split("\0") if p)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, everything the build printed)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    src = tmp_path_factory.mktemp("src")
    for rel in _tracked("."):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out_dir = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out_dir)], cwd=src, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(src), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out_dir.glob("modtransfer-*.whl"))
    assert len(wheels) == 1
    return wheels[0], proc.stdout + proc.stderr


def test_the_build_prints_no_warning(built: tuple[Path, str]) -> None:
    _, log = built
    noisy = [line for line in log.splitlines() if "warning" in line.lower() or "deprecat" in line.lower()]
    assert noisy == [], "\n".join(noisy)


def test_the_wheel_carries_every_plan_and_reference_csv(built: tuple[Path, str]) -> None:
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [f"modtransfer/{p}" for p in _tracked("configs/*.yaml")]
    wanted += [f"modtransfer/reports/data/{Path(p).name}" for p in _tracked("reports/data/*.csv")]
    assert any(w.startswith("modtransfer/configs/bench/") for w in wanted)
    assert any(w.endswith(".csv") for w in wanted)
    missing = [w for w in wanted if w not in names]
    assert missing == [], missing
    assert "modtransfer/run/plan_file.py" in names and "modtransfer/variants/baseline/__init__.py" in names
