"""Broken plans: each is one clear line on stderr, exit code 2, and nothing written.

Every case starts from a valid tiny plan (:data:`BASE`, checked by
:func:`test_base_plan_is_valid`) and breaks exactly one thing, so the error can only come
from that change. The CLI runs in-process; the runs folder must not exist afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from modtransfer import cli

BASE: dict[str, Any] = {
    "name": "bad",
    "size": "tiny",
    "seeds": 1,
    "variants": ["gelu"],
    "tasks": ["regression"],
    "spec": {"d_model": 32, "n_layers": 1, "d_ff": 64},
    "task_budget": {"regression": {"steps": 5, "batch_size": 4}},
    "wandb": {"mode": "disabled"},
}

RAW = object()  # marks a case whose plan file is given as raw text


@dataclass
class Case:
    """A plan that breaks one rule, and the words its error line must contain."""

    id: str
    expect: list[str]
    patch: dict[str, Any] = field(default_factory=dict)   # top-level keys replaced in BASE
    drop: list[str] = field(default_factory=list)         # top-level keys removed from BASE
    text: str | None = None                               # raw plan text instead of BASE
    args: list[str] = field(default_factory=list)         # extra CLI arguments
    no_file: bool = False                                 # pass a path that does not exist


CASES = [
    Case("missing-file", ["not found", "does_not_exist.yaml"], no_file=True),
    Case("not-yaml", ["not valid YAML", "line"], text="name: bad\nvariants: [gelu\ntasks: [regression]\n"),
    Case("yaml-list", ["must be a YAML mapping"], text="- gelu\n- swiglu\n"),
    Case("empty-file", ["must be a YAML mapping"], text=""),
    Case("unknown-key", ["unknown key 'varients'", "did you mean 'variants'"],
         patch={"varients": ["gelu"]}, drop=["variants"]),
    Case("seeds-wrong-type", ["plan.seeds", "three"], patch={"seeds": "three"}),
    Case("seeds-negative-count", ["plan.seeds", ">= 1"], patch={"seeds": -2}),
    Case("seeds-negative-list", ["plan.seeds", "non-negative"], patch={"seeds": [0, -1]}),
    Case("seeds-duplicate", ["plan.seeds", "twice"], patch={"seeds": [0, 1, 0]}),
    Case("bad-name", ["plan.name", "my plan!"], patch={"name": "my plan!"}),
    Case("variants-not-list", ["plan.variants", "list"], patch={"variants": "gelu"}),
    Case("unknown-variant", ["gelo", "did you mean", "'gelu'"], patch={"variants": ["gelo"]}),
    Case("glob-matches-nothing", ["no variant matches", "*zzz_nothing*"], patch={"variants": ["*zzz_nothing*"]}),
    Case("bad-variant-params", ["cannot parse the parameters", "init_normal"],
         patch={"variants": ["init_normal(std=)"]}),
    Case("conflicting-combination", ["swiglu", "geglu", "cannot be combined"], patch={"variants": ["swiglu+geglu"]}),
    Case("baseline-combined", ["'baseline' cannot be combined"], patch={"variants": ["baseline+gelu"]}),
    Case("unknown-task", ["regresion", "did you mean", "'regression'"], patch={"tasks": ["regresion"]}),
    Case("task-glob-matches-nothing", ["no task matches", "zzz*"], patch={"tasks": ["zzz*"]}),
    Case("unknown-size", ["unknown size preset", "huge"], patch={"size": "huge"}),
    Case("spec-unknown-field", ["d_modle", "d_model"], patch={"spec": {"d_modle": 32}}),
    Case("spec-wrong-type", ["d_model", "integer", "big"], patch={"spec": {"d_model": "big"}}),
    Case("spec-heads-not-divisor", ["d_model=30", "n_heads=4", "divisible"],
         patch={"spec": {"d_model": 30, "n_heads": 4}}),
    Case("spec-unknown-component", ["batchnorm", "norm"], patch={"spec": {"norm": "batchnorm"}}),
    Case("budget-unknown-field", ["stpes", "did you mean 'steps'"], patch={"budget": {"stpes": 10}}),
    Case("budget-negative-steps", ["budget.steps", "-5"], patch={"budget": {"steps": -5}}),
    Case("budget-bad-schedule", ["budget.schedule", "cosin"], patch={"budget": {"schedule": "cosin"}}),
    Case("budget-bad-betas", ["budget.betas"], patch={"budget": {"betas": [0.9]}}),
    Case("budget-warmup-too-big", ["warmup", "< 1"], patch={"budget": {"warmup": 1.5}}),
    Case("task-budget-unknown-task", ["regresion", "did you mean"],
         patch={"task_budget": {"regresion": {"steps": 5}}}),
    Case("task-budget-not-mapping", ["plan.task_budget.regression", "mapping"],
         patch={"task_budget": {"regression": 5}}),
    Case("task-budget-zero-batch", ["batch_size", ">= 1"], patch={"task_budget": {"regression": {"batch_size": 0}}}),
    Case("task-config-unknown-option", ["positons", "did you mean 'positions'"],
         patch={"task_config": {"regression": {"positons": 5}}}),
    Case("task-config-wrong-type", ["positions", "int", "ten"],
         patch={"task_config": {"regression": {"positions": "ten"}}}),
    Case("hparams-not-budget-field", ["learning_rate", "not a budget field"],
         patch={"hparams": {"learning_rate": [0.1, 0.01]}}),
    Case("hparams-not-list", ["plan.hparams.lr", "list"], patch={"hparams": {"lr": 0.1}}),
    Case("hparams-bad-value", ["plan.hparams", "budget.lr"], patch={"hparams": {"lr": [0.001, "fast"]}}),
    Case("wandb-bad-mode", ["plan.wandb.mode", "sometimes"], patch={"wandb": {"mode": "sometimes"}}),
    Case("wandb-unknown-key", ["projet", "did you mean 'project'"], patch={"wandb": {"projet": "x"}}),
    Case("executor-unknown", ["executor", "slurm"], patch={"executor": "slurm"}),
    Case("workers-zero", ["workers", ">= 1"], patch={"workers": 0}),
    Case("include-baseline-not-bool", ["plan.include_baseline", "true/false"], patch={"include_baseline": "yes"}),
    Case("unknown-plugin-file", ["plugin file", "no_such_plugin.py", "not found"],
         args=["--plugin", "no_such_plugin.py"]),
    Case("cli-workers-zero", ["--workers", ">= 1"], args=["--workers", "0", "--dry-run"]),
    Case("cli-seeds-zero", ["--seeds", ">= 1"], args=["--seeds", "0"]),
    Case("cli-unknown-variant", ["swiglo", "did you mean"], args=["--variants", "swiglo"]),
]


#: Cases that need a fix in a lead-owned file; the lead removes an entry with the fix.
XFAIL: dict[str, str] = {}


def _params() -> list[Any]:
    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(reason=XFAIL[c.id], strict=True))
            if c.id in XFAIL else pytest.param(c, id=c.id) for c in CASES]


@pytest.fixture(autouse=True)
def _no_stale_plugin_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin problems from other tests in this process must not add warning lines here."""
    monkeypatch.setattr("modtransfer.plugins.PROBLEMS", [])


def _write_plan(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / "plan.yaml"
    if case.no_file:
        return tmp_path / "does_not_exist.yaml"
    if case.text is not None:
        path.write_text(case.text)
        return path
    plan = {k: v for k, v in BASE.items() if k not in case.drop}
    plan.update(case.patch)
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _run(tmp_path: Path, plan: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--no-report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_base_plan_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The starting point of every case passes validation (dry run: 2 cells, nothing written)."""
    plan = _write_plan(tmp_path, Case("base", []))
    code, out, err = _run(tmp_path, plan, ["--dry-run"], capsys)
    assert code == 0, err
    assert "2 to train, 0 already done" in out
    assert not (tmp_path / "runs").exists()


def test_there_are_at_least_twenty_kinds() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize("case", _params())
def test_bad_plan_is_one_line_exit_2_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      case: Case) -> None:
    plan = _write_plan(tmp_path, case)
    code, out, err = _run(tmp_path, plan, case.args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stdout={out!r} stderr={err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("error: ")
    for word in case.expect:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert out == ""
    assert not (tmp_path / "runs").exists()


def test_plugin_before_the_command_is_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``modtransfer --plugin FILE run PLAN`` must load FILE like ``modtransfer run PLAN --plugin FILE``."""
    plan = _write_plan(tmp_path, Case("base", []))
    code = cli.main(["--plugin", "no_such_plugin.py", "run", str(plan), "--runs-dir", str(tmp_path / "runs"),
                     "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no_such_plugin.py" in err
