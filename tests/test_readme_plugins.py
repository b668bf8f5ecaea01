"""The plugin examples in the README work as printed: each code block is written to a file and used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.run.store import Store

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_files() -> dict[str, str]:
    """Python blocks of the README whose first line names a file: ``# name.py...``."""
    out = {}
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        m = re.match(r"# (\w+\.py)", block)
        if m:
            out[m.group(1)] = block
    return out


def test_the_examples_are_there_and_qk_cosine_is_short() -> None:
    files = readme_files()
    assert {"squared_relu.py", "layerscale.py", "qk_cosine.py", "reverse_task.py"} <= set(files)
    assert len(files["qk_cosine.py"].strip().splitlines()) < 25


@pytest.mark.parametrize(("name", "variant"), [
    ("squared_relu.py", "squared_relu"),
    ("qk_cosine.py", "qk_cosine"),
    ("layerscale.py", "switch(capacity_factor=1.25)+layerscale"),
])
def test_variant_examples_pass_check(tmp_path: Path, temporary_plugin, capsys: pytest.CaptureFixture[str],
                                     name: str, variant: str) -> None:
    path = tmp_path / name
    text = readme_files()[name]
    if name == "squared_relu.py":  # the suite's example plugin registers the same names already
        text, variant = text.replace('"squared_relu"', '"squared_relu_readme"'), "squared_relu_readme"
    path.write_text(text)
    code = cli.main(["check", variant, "--plugin", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out


@pytest.mark.slow  # about 30 s: run with -m slow
def test_task_example_runs_end_to_end(tmp_path: Path, temporary_plugin,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "reverse_task.py"
    path.write_text(readme_files()["reverse_task.py"])
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "rev", "size": "tiny", "seeds": 3, "variants": ["gelu"],
                                    "tasks": ["reverse"], "wandb": {"mode": "disabled"}}))
    assert cli.main(["ls", "tasks", "--plugin", str(path)]) == 0
    assert "reverse" in capsys.readouterr().out
    assert cli.main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--plugin", str(path)]) == 0
    rows = Store(tmp_path / "runs" / "rev" / "results.sqlite").rows()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    base = [r["primary_value"] for r in rows if r["variant"] == "baseline"]
    assert min(base) > 0.5, base          # the default budget learns to reverse (chance is 0.1)
    md = (tmp_path / "runs" / "rev" / "report" / "report.md").read_text()
    assert "| reverse | val_acc |" in md and "learned" in md
