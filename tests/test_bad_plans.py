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

import modtransfer.cli.commands as cli

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

SHARED = {"steps": 5, "batch_size": 4}  # one object under two keys: yaml.safe_dump writes an anchor and an alias

#: A "billion laughs" under a real key: 10 levels of 9 references (9**10 strings once expanded; the error
#: message of the type check alone took minutes to build before anchors were refused while parsing).
BOMB_IN_VARIANTS = "name: bad\ntasks: [regression]\nvariants:\n  - &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))


@dataclass
class Case:
    """A plan that breaks one rule, and the words its error line must contain."""

    id: str
    expect: list[str]
    patch: dict[str, Any] = field(default_factory=dict)   # top-level keys replaced in BASE
    drop: list[str] = field(default_factory=list)         # top-level keys removed from BASE
    text: str | None = None                               # raw plan text instead of BASE
    raw: bytes | None = None                              # raw plan bytes instead of BASE
    args: list[str] = field(default_factory=list)         # extra CLI arguments ({plan}, {plugins} filled in)
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
    # -- issue "Nothing wrong is ever stored as a result": refused before training, nothing written
    Case("seed-too-large", ["4294967296", "below 2**32"], patch={"seeds": [0, 4294967296]}),
    Case("seeds-count-huge", ["plan.seeds", "1000000000", "more than 1000"], patch={"seeds": 1000000000}),
    Case("cli-seeds-huge", ["plan.seeds", "more than 1000"], args=["--seeds", "1000000000"]),
    Case("name-too-long", ["plan.name", "1-100"], patch={"name": "a" * 300}),
    Case("name-dotdot", ["plan.name", "'..'"], patch={"name": ".."}),
    Case("name-dot", ["plan.name", "'.'"], patch={"name": "."}),
    Case("name-separator", ["plan.name", "a/b"], patch={"name": "a/b"}),
    Case("cli-name-dotdot", ["--name", "'..'"], args=["--name", ".."]),
    Case("binary-plan", ["not a UTF-8 text file"], raw=bytes(range(256)) * 4),
    Case("nul-in-plan", ["binary file"], raw=b"name: bad\n\x00\x01tasks: [regression]\n"),
    Case("yaml-alias-bomb", ["line 1", "anchors and aliases", "&a", "write the value out"],
         text="a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
              "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
              "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
              "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
              "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\nj: &j [*i, *i, *i, *i, *i, *i, *i, *i, *i]\n"
              "k: &k [*j, *j, *j, *j, *j, *j, *j, *j, *j]\nl: &l [*k, *k, *k, *k, *k, *k, *k, *k, *k]\n"
              "m: &m [*l, *l, *l, *l, *l, *l, *l, *l, *l]\n"),
    Case("yaml-deep-nesting", ["nests deeper than 20"], text="name: " + "[" * 5000 + "]" * 5000 + "\n"),
    Case("yaml-duplicate-key", ["key 'seeds' appears twice", "line 3"],
         text="name: bad\nseeds: 1\nseeds: 2\nvariants: [gelu]\ntasks: [regression]\n"),
    Case("yaml-duplicate-nested-key", ["key 'steps' appears twice"],
         text="name: bad\ntasks: [regression]\nbudget:\n  steps: 5\n  steps: 50\n"),
    Case("wandb-project-slash", ["plan.wandb.project", "a/b", "not a valid W&B name"],
         patch={"wandb": {"mode": "disabled", "project": "a/b"}}),
    Case("wandb-entity-space", ["plan.wandb.entity", "not a valid W&B name"],
         patch={"wandb": {"mode": "disabled", "entity": "my team"}}),
    Case("runs-dir-is-a-file", ["--runs-dir", "is a file, not a folder"], args=["--runs-dir", "{plan}"]),
    Case("runs-dir-under-a-file", ["--runs-dir", "is a file, not a folder"], args=["--runs-dir", "{plan}/sub"]),
    Case("runs-dir-proc", ["--runs-dir", "/proc", "cannot be written"], args=["--runs-dir", "/proc"]),
    Case("device-unknown", ["--device", "tpu"], args=["--device", "tpu"]),
    Case("device-bad-index", ["--device", "cuda:x"], args=["--device", "cuda:x"]),
    Case("too-many-cells", ["more than 5000", "--yes"], patch={"seeds": 1000, "hparams": {"lr": [0.1] * 3}}),
    Case("include-baseline-false", ["include_baseline: false is not supported"], patch={"include_baseline": False}),
    Case("margins-string", ["plan.margins.regression", "write 1.0e-3"], patch={"margins": {"regression": "1e-3"}}),
    Case("margins-unknown-task", ["plan.margins.lm", "not a task of this plan"], patch={"margins": {"lm": 0.1}}),
    Case("margins-negative", ["plan.margins.regression", "positive"], patch={"margins": {"regression": -1.0}}),
    Case("adaptive-seeds-min-too-small", ["plan.seeds.min", ">= 3"], patch={"seeds": {"min": 1, "max": 6}}),
    Case("adaptive-seeds-bad-key", ["plan.seeds", "maximum"], patch={"seeds": {"min": 3, "maximum": 6}}),
    Case("plugin-syntax-error", ["syntax_error.py:6", "SyntaxError"],
         args=["--plugin", "{plugins}/bad/syntax_error.py"]),
    Case("plugin-raises-at-import", ["raises_value_error.py:7", "ValueError", "bad plugin setting"],
         args=["--plugin", "{plugins}/bad/raises_value_error.py"]),
    Case("plugin-calls-sys-exit", ["calls_sys_exit.py", "sys.exit(3)"],
         args=["--plugin", "{plugins}/bad/calls_sys_exit.py"]),
    Case("plugin-shadows-builtin", ["'gelu' is registered twice", "override=True"],
         args=["--plugin", "{plugins}/bad/shadows_builtin.py"]),
    Case("budget-lr-string", ["budget.lr", "1e-3", "write 1.0e-3"], patch={"budget": {"lr": "1e-3"}}),
    Case("budget-lr-nan", ["budget.lr", "nan", "finite"], patch={"budget": {"lr": float("nan")}}),
    Case("budget-lr-inf", ["budget.lr", "inf", "finite"], patch={"task_budget": {"regression": {"lr": float("inf")}}}),
    Case("budget-batch-string", ["budget.batch_size", "1e9"], patch={"budget": {"batch_size": "1e9"}}),
    Case("budget-batch-absurd", ["budget.batch_size", "1000000000", "at most"],
         patch={"budget": {"batch_size": 10**9}}),
    Case("budget-steps-absurd", ["budget.steps", "at most"], patch={"budget": {"steps": 10**12}}),
    Case("budget-diverge-negative", ["budget.diverge_factor"], patch={"budget": {"diverge_factor": -1.0}}),
    # -- issue 24: the last tracebacks
    Case("yaml-alias-bomb-in-a-key", ["line 4", "anchors and aliases", "&a0"], text=BOMB_IN_VARIANTS),
    Case("yaml-one-anchor", ["line 3", "anchors and aliases", "&steps"],
         text="name: bad\ntasks: [regression]\nbudget: &steps {steps: 5}\n"),
    Case("yaml-merge-key", ["line 4", "anchors and aliases", "*b"],
         text="name: bad\ntasks: [regression]\nbudget: {steps: 5}\ntask_budget: {regression: {<<: *b}}\n"),
    Case("yaml-dumped-shared-mapping", ["anchors and aliases", "&id001", "dump a copy of each"],
         text=yaml.safe_dump({**BASE, "task_budget": {"regression": SHARED, "regression_product": SHARED}})),
    Case("plan-too-large", ["bytes", "more than a plan YAML may be"],
         text="name: bad\n" + "# padding\n" * 30000),
    Case("implementations-empty", ["plan.implementations is an empty list", "drop the key"],
         patch={"implementations": []}),
    Case("sizes-empty", ["plan.sizes is an empty list"], patch={"sizes": []}, drop=["size"]),
    Case("tasks-empty", ["plan.tasks is an empty list"], patch={"tasks": []}),
    Case("seeds-empty", ["plan.seeds is an empty list"], patch={"seeds": []}),
    Case("hparams-values-empty", ["plan.hparams.lr", "non-empty list"], patch={"hparams": {"lr": []}}),
    Case("hparams-cross-values-empty", ["plan.hparams.warmup", "non-empty list"],
         patch={"hparams": [{"cross": {"lr": [1.0e-3], "warmup": []}}]}),
]


#: Cases that need a fix in a lead-owned file; the lead removes an entry with the fix.
XFAIL: dict[str, str] = {}


def _params() -> list[Any]:
    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(reason=XFAIL[c.id], strict=True))
            if c.id in XFAIL else pytest.param(c, id=c.id) for c in CASES]


@pytest.fixture(autouse=True)
def _no_stale_plugin_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin problems from other tests in this process must not add warning lines here."""
    monkeypatch.setattr("modtransfer.core.plugins.PROBLEMS", [])


def _write_plan(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / "plan.yaml"
    if case.no_file:
        return tmp_path / "does_not_exist.yaml"
    if case.text is not None:
        path.write_text(case.text)
        return path
    if case.raw is not None:
        path.write_bytes(case.raw)
        return path
    plan = {k: v for k, v in BASE.items() if k not in case.drop}
    plan.update(case.patch)
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _run(tmp_path: Path, plan: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    plugins = Path(__file__).parent / "plugins"
    args = [a.format(plan=plan, plugins=plugins) for a in args]
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


def test_there_are_at_least_sixty_kinds() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 60


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


def test_alias_bomb_is_refused_while_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: the refusal comes from the composer, at the first anchor: no YAML node is turned into a
    Python object (before, the type check's error message expanded 9**10 strings and never ended)."""
    from modtransfer.core.errors import UserError
    from modtransfer.run import plan_file

    built: list[object] = []
    monkeypatch.setattr(plan_file._PlanLoader, "construct_document", lambda self, node: built.append(node))
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB_IN_VARIANTS)
    with pytest.raises(UserError, match="line 4: YAML anchors and aliases"):
        plan_file.read_plan_file(path)
    assert built == []
