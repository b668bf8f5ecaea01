"""``modtransfer compare``: two real run folders (tiny regression plans through the CLI), matching,
agreement of signs and calls on known answers, "What changed", and the exit-2 errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modtransfer.cli.commands import main
from modtransfer.reports.analysis import Comparison, Condition
from modtransfer.reports.compare import Input, Match, agreement_line, match
from modtransfer.reports.summary import analyse, analyse_run


def _plan(folder: Path, name: str, steps: int, variants: list[str]) -> Path:
    plan = {"name": name, "size": "tiny", "seeds": 3, "tasks": ["regression"], "variants": variants,
            "spec": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
            "budget": {"steps": steps, "batch_size": 4, "eval_batches": 1}, "wandb": {"mode": "disabled"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run a (6 steps; gelu, rmsnorm) and run b (12 steps; gelu, rmsnorm, swiglu): 3 seeds each."""
    root = tmp_path_factory.mktemp("compare")
    for name, steps, variants in (("a", 6, ["gelu", "rmsnorm"]), ("b", 12, ["gelu", "rmsnorm", "swiglu"])):
        assert main(["run", str(_plan(root, name, steps, variants)), "--runs-dir", str(root / "runs"),
                     "--no-report"]) == 0
    return root / "runs" / "a", root / "runs" / "b"


def md_table(md: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table whose header row starts with ``first_header``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    headers = [h.strip() for h in lines[start].strip("|").split("|")]
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        out.append(dict(zip(headers, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return out


def _sign(c: Comparison) -> int:
    return (c.mean_diff > 0) - (c.mean_diff < 0)


def test_compare_two_real_runs(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = runs
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"comparison: {out / 'index.html'}"
    md = (out / "compare.md").read_text()
    rows = {r["Variant"]: r for r in md_table(md, "Variant | a: Δ [CI]")}
    assert set(rows) == {"gelu", "rmsnorm", "swiglu"}
    ca = {c.variant: c for c in analyse_run(a).comps}
    cb = {c.variant: c for c in analyse_run(b).comps}
    signs = calls = 0
    for v in ("gelu", "rmsnorm"):  # in both runs: matched although the budgets (and conditions) differ
        assert rows[v]["a: Δ [CI]"].startswith(f"{ca[v].mean_diff:+.3g} [") and rows[v]["a: Δ [CI]"].endswith("n=3")
        assert rows[v]["b: Δ [CI]"].startswith(f"{cb[v].mean_diff:+.3g} [")
        same_sign, same_call = _sign(ca[v]) == _sign(cb[v]), ca[v].call == cb[v].call
        assert rows[v]["Signs agree"] == ("yes" if same_sign else "no")
        assert rows[v]["Calls agree"] == ("yes" if same_call else "no")
        signs, calls = signs + same_sign, calls + same_call
    assert rows["swiglu"]["a: Δ [CI]"] == "— not run" and rows["swiglu"]["Signs agree"] == "—"
    assert f"calls agree on {calls}/2 pairs" in md and f"signs agree on {signs}/2" in md
    changed = {r["Field"]: r for r in md_table(md, "Field")}
    assert (changed["budget.steps"]["a"], changed["budget.steps"]["b"]) == ("6", "12")
    assert (changed["plan.budget.steps"]["a"], changed["plan.budget.steps"]["b"]) == ("6", "12")
    assert "swiglu" in changed["variants"]["b"] and "swiglu" not in changed["variants"]["a"]
    assert not {"sizes", "implementations", "seeds", "code.commit"} & set(changed)
    assert "Unchanged: " in md and "sizes (tiny)" in md and "seeds (3 (0–2))" in md
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="changed-table"' in page and "Signs agree" in page
    # a second comparison into the same folder replaces it, and says so
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert "replacing the earlier comparison" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "index.html"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".compare")]


def test_run_against_its_own_report_folder_agrees_everywhere(runs: tuple[Path, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Known answer: the same results twice (once through a report folder) agree on every sign and call."""
    a, _ = runs
    report = tmp_path / "report"
    report.mkdir()
    (report / "results.json").write_text(json.dumps({"run_dir": str(a.resolve())}))
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(a), str(report)]) == 0
    md = (tmp_path / "compare-a_1-vs-a_2" / "compare.md").read_text()
    assert "calls agree on 2/2 pairs" in md and "signs agree on 2/2" in md
    rows = md_table(md, "Variant | a#1: Δ [CI]")
    assert [r["Variant"] for r in rows] == [v for v in analyse_run(a).order]
    assert all(r["a#1: Δ [CI]"] == r["a#2: Δ [CI]"] and r["Calls agree"] == "yes" for r in rows)
    assert "Nothing recorded differs between the inputs." in md


def _comp(variant: str, diffs: list[float], call: str, *, task: str = "lm", size: str = "tiny") -> Comparison:
    cond = Condition(task, size, "{}", "val_loss", False, task)
    return Comparison(variant, cond, diffs=diffs, call=call)


def test_sign_and_call_agreement_on_constructed_cases() -> None:
    same = Match("a", "lm", "", [_comp("a", [0.1, 0.3], "better"), _comp("a", [0.2, 0.1], "unclear")])
    flip = Match("b", "lm", "", [_comp("b", [0.1, 0.2], "better"), _comp("b", [-0.3, -0.1], "worse")])
    half = Match("c", "lm", "", [_comp("c", [0.1], "too few seeds"), None])
    nodata = Match("d", "lm", "", [_comp("d", [], "missing"), _comp("d", [], "missing")])
    assert (same.signs_agree, same.calls_agree, same.opposite) == (True, False, False)
    assert (flip.signs_agree, flip.calls_agree, flip.opposite) == (False, False, True)
    assert (half.signs_agree, half.calls_agree) == (None, None)
    assert (nodata.signs_agree, nodata.calls_agree) == (None, True)
    assert agreement_line([same, flip, half, nodata]) == (
        "calls agree on 1/3 pairs (1 decided in every input); signs agree on 1/2; "
        "1 pair(s) called better in one input and worse in another")
    assert agreement_line([half]).startswith("no variant x task setting is present in every input")


def _row(variant: str, seed: int, size: str, value: float) -> dict[str, Any]:
    return {"cell_id": f"{variant}-{seed}-{size}", "benchmark": "syn", "variant": variant, "task": "lm", "seed": seed,
            "size": size, "hparams": {}, "status": "done", "primary_metric": "val_loss", "higher_is_better": 0,
            "primary_value": value, "metrics": {}, "curve": [], "params": 1000, "flops_per_token": 6000.0,
            "tokens_per_s": 1e4, "spec": {"d_model": 32 if size == "tiny" else 64}, "task_config": {},
            "budget": {"steps": 10}, "env": {"commit": "abc"}}


def _input(name: str, effects: dict[str, float]) -> Input:
    """A store of baseline and variant v per size; ``effects[size]``: v's change of loss (< 0 = better)."""
    rows = []
    for size, eff in effects.items():
        for s in range(3):
            rows += [_row("baseline", s, size, 2.0 + 0.1 * s), _row("v", s, size, 2.0 + 0.1 * s + eff + 0.01 * s)]
    return Input(name, Path(name), Path(name), analyse(rows, {}))


def test_matching_by_setting_not_by_label() -> None:
    """One input runs two sizes (labels lm@tiny, lm@small), the other only small (label lm): small meets small."""
    both = _input("both", {"tiny": -0.5, "small": 0.5})
    small = _input("small", {"small": 0.4})
    assert {c.cond.label for c in both.analysis.comps} == {"lm@tiny", "lm@small"}
    assert [c.cond.label for c in small.analysis.comps] == ["lm"]
    got = {m.setting: m for m in match([both, small])}
    assert set(got) == {"size=small", "size=tiny"}
    assert got["size=small"].comps[1] is not None and got["size=small"].signs_agree is True
    assert got["size=tiny"].comps[1] is None and got["size=tiny"].signs_agree is None
    # two inputs of one size each (tiny vs small) match although the sizes differ
    tiny = _input("tiny", {"tiny": -0.5})
    (m,) = match([tiny, small])
    assert m.setting == "" and m.signs_agree is False and m.comps[0].cond.size == "tiny"


def _err(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_user_errors_exit_2(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, _ = runs
    assert "two or more" in _err(capsys, str(a))
    assert "does not exist" in _err(capsys, str(a), str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "neither a run folder" in _err(capsys, str(a), str(tmp_path / "empty"))
    gone = tmp_path / "gone-report"
    gone.mkdir()
    (gone / "results.json").write_text(json.dumps({"run_dir": str(tmp_path / "deleted-run")}))
    assert "no longer holds results.sqlite" in _err(capsys, str(a), str(gone))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not a comparison" in _err(capsys, str(a), str(a), "--out", str(busy))
    assert (busy / "notes.txt").read_text() == "mine"
    assert "is or holds the input" in _err(capsys, str(a), str(a), "--out", str(a.parent))
