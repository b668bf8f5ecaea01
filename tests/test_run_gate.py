"""The contract gates `run`: plugin variants that fail it are refused before anything trains.

Real CLI runs in-process on tiny lm/regression cells; the gate's cache lives in a temporary
MODTRANSFER_CACHE so each test starts cold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.run.plan import load_plan
from modtransfer.run.store import Store

PLUGINS = Path(__file__).parent / "plugins"


def _plan(tmp_path: Path, variants: list[str], tasks: list[str]) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump({"name": "gate", "size": "tiny", "seeds": 1, "variants": variants, "tasks": tasks,
                                 "spec": {"d_model": 32, "n_layers": 2, "d_ff": 64},
                                 "task_budget": {t: {"steps": 4, "batch_size": 4} for t in tasks},
                                 "wandb": {"mode": "disabled"}}))
    return p


@pytest.fixture
def cold_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, temporary_plugin) -> Path:
    """A gate cache of its own (the task data cache stays where the suite keeps it)."""
    import os

    data = Path(os.environ.get("MODTRANSFER_CACHE", tmp_path / "data"))
    cache = tmp_path / "gate-cache"
    cache.mkdir()
    for entry in data.iterdir() if data.is_dir() else []:
        (cache / entry.name).symlink_to(entry)
    monkeypatch.setenv("MODTRANSFER_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(("plugin", "variant", "check"), [
    ("leaky_plugin.py", "leaky_ffn", "causality"),
    ("cheat_plugin.py", "cheat_peek_ahead", "causality"),       # an attention that sees one token ahead
    ("moe_leak_plugin.py", "moe_batch_major", "causality"),
])
def test_a_leaking_plugin_is_refused_before_training(tmp_path: Path, cold_cache: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     plugin: str, variant: str, check: str) -> None:
    plan = _plan(tmp_path, [variant], ["lm"])
    code = cli.main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--plugin", str(PLUGINS / plugin)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"variant '{variant}' fails the contract on task 'lm', check '{check}'" in err
    assert f"modtransfer check {variant}" in err
    assert not (tmp_path / "runs").exists(), "nothing may be written before the gate passes"


def test_a_passing_plugin_runs_and_the_gate_is_cached(tmp_path: Path, cold_cache: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan(tmp_path, ["qk_cosine"], ["regression"])
    args = ["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--plugin", str(PLUGINS / "qk_cosine.py"),
            "--no-report"]
    started = time.perf_counter()
    assert cli.main(args) == 0
    first = time.perf_counter() - started
    assert (cold_cache / "gate.json").is_file()
    rows = Store(tmp_path / "runs" / "gate" / "results.sqlite").rows()
    assert {r["env"]["contract_gate"] for r in rows if r["variant"] == "qk_cosine"} == {"passed"}
    assert {r["env"]["contract_gate"] for r in rows if r["variant"] == "baseline"} == {"built-in"}
    started = time.perf_counter()
    assert cli.main(args) == 0   # nothing to train, gate served from its cache
    print(f"first run {first:.1f} s, second {time.perf_counter() - started:.1f} s")  # printed, never asserted


def test_no_check_trains_and_records_it(tmp_path: Path, cold_cache: Path) -> None:
    plan = _plan(tmp_path, ["leaky_ffn"], ["lm"])
    code = cli.main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--plugin",
                     str(PLUGINS / "leaky_plugin.py"), "--no-check", "--no-report"])
    assert code == 0
    rows = Store(tmp_path / "runs" / "gate" / "results.sqlite").rows()
    assert {r["env"]["contract_gate"] for r in rows if r["variant"] == "leaky_ffn"} == {"skipped"}


def test_plugin_code_is_part_of_the_cell_id(tmp_path: Path, temporary_plugin) -> None:
    src = (PLUGINS / "qk_cosine.py").read_text()
    copy = tmp_path / "qk_copy.py"
    copy.write_text(src)
    assert temporary_plugin(copy) is not None
    spec = {"name": "ids", "seeds": 1, "variants": ["qk_cosine", "gelu"], "tasks": ["regression"]}
    before = {c.variant: c.cell_id for c in load_plan(spec).all_cells}
    copy.write_text(src.replace("max(spec.max_len * (spec.max_len - 1), 2)", "max(spec.max_len * spec.max_len, 2)"))
    after = {c.variant: c.cell_id for c in load_plan(spec).all_cells}
    assert before["qk_cosine"] != after["qk_cosine"], "a changed plugin must train anew"
    assert before["gelu"] == after["gelu"] and before["baseline"] == after["baseline"]
