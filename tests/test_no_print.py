"""Only the command line prints: every other module returns values or logs through ``logging``.

Checked statically, like the layers in ``test_architecture.py``: a ``print(...)`` call or a write to
``sys.stdout`` / ``sys.stderr`` anywhere in the package outside ``cli/`` and ``bench/`` (the two layers
whose job is to talk to the user) is a failure. A library caller of ``build_report`` then decides
what to show, and the CLI shows the reports' notes through :func:`modtransfer.cli.results.report_messages`.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the source folders of the package (pyproject's package-dir)
SOURCES = ("harness", "variants", "tasks", "reports")
#: the layers that talk to the user
ALLOWED = (ROOT / "harness" / "cli", ROOT / "harness" / "bench")
#: stand-alone scripts, not installed with the package (no package lists them); their output is their job
SCRIPTS = (ROOT / "reports" / "examples",)
#: Known exceptions, with what is left to do. Remove a file from here once it no longer prints.
KNOWN: set[str] = set()


def _prints(path: Path) -> list[int]:
    """The lines of ``path`` that call ``print`` or write to ``sys.stdout`` / ``sys.stderr``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "print":
            lines.append(node.lineno)
        elif (isinstance(f, ast.Attribute) and f.attr in ("write", "writelines") and isinstance(f.value, ast.Attribute)
              and f.value.attr in ("stdout", "stderr") and isinstance(f.value.value, ast.Name)
              and f.value.value.id == "sys"):
            lines.append(node.lineno)
    return lines


def _checked() -> list[Path]:
    out = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(path.is_relative_to(p) for p in (*ALLOWED, *SCRIPTS)):
                continue
            out.append(path)
    return out


def test_the_checker_finds_a_print(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\n\ndef f():\n    print('x')\n    sys.stderr.write('y')\n    log('z')\n")
    assert _prints(bad) == [4, 5]


def test_only_cli_and_bench_print() -> None:
    files = _checked()
    assert any(p.parent.name == "reports" for p in files) and len(files) > 50
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := _prints(p))}
    unexpected = {k: v for k, v in found.items() if k not in KNOWN}
    assert not unexpected, ("print outside cli/ and bench/ (return the text or log it, and print it in "
                            f"harness/cli): {unexpected}")


@pytest.mark.parametrize("known", sorted(KNOWN))
def test_known_exceptions_still_print(known: str) -> None:
    """The TODO list stays true: a file fixed is taken off it (then this test fails and says so)."""
    assert _prints(ROOT / known), f"{known} no longer prints: remove it from KNOWN in tests/test_no_print.py"


def test_report_notes_reach_the_cli_user_and_not_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    from modtransfer.cli.results import report_messages

    log = logging.getLogger("modtransfer.reports.build")
    with report_messages():
        log.info("replacing the earlier report in X")
        log.warning("W&B failed while Y")
    log.info("outside the CLI: not shown")
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["note: replacing the earlier report in X", "warning: W&B failed while Y"]
    assert not logging.getLogger("modtransfer.reports").handlers, "the handler is removed after the command"
