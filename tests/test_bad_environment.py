"""Broken environments: W&B online without a usable key, damaged stores, unknown sizes and devices.

Each ends in one ``error:`` line and exit code 2 before anything trains, and writes nothing.
The W&B cases run ``python -m modtransfer`` in a subprocess with HOME pointed at a temporary
folder, so no login attempt can touch the user's files or outlive the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import modtransfer.cli.commands as cli
from modtransfer.run.store import Store

PLAN = {"name": "env", "size": "tiny", "seeds": 1, "variants": ["gelu"], "tasks": ["regression"],
        "spec": {"d_model": 32, "n_layers": 1, "d_ff": 64}, "task_budget": {"regression": {"steps": 5}},
        "wandb": {"mode": "disabled"}}


def _plan(tmp_path: Path, **patch: object) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**PLAN, **patch}))
    return path


def _cli(tmp_path: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    (tmp_path / "home").mkdir(exist_ok=True)
    if key is not None:
        env["WANDB_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "modtransfer", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("wandb:")]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_wandb_online_without_a_key_is_refused_before_training(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "run", str(_plan(tmp_path)), "--runs-dir", str(tmp_path / "runs"), "--wandb", "online")
    _one_error_line(proc, "needs an API key", "wandb login", "--wandb offline")
    assert not (tmp_path / "runs").exists()


def test_wandb_online_with_a_key_that_cannot_be_checked_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _cli(tmp_path, "run", str(_plan(tmp_path)), "--runs-dir", str(tmp_path / "runs"), "--wandb", "online",
                key="0" * 40)
    took = time.monotonic() - started
    _one_error_line(proc, "W&B", "--wandb offline")
    assert not (tmp_path / "runs").exists()
    print(f"refused in {took:.1f} s")  # bounded by the login check's timeout, not W&B's minutes of retries


def test_report_online_without_a_key_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "runs"
    assert cli.main(["run", str(_plan(tmp_path)), "--runs-dir", str(run), "--no-report"]) == 0
    proc = _cli(tmp_path, "report", str(run / "env"), "--wandb", "online")
    _one_error_line(proc, "needs an API key")
    assert not (run / "env" / "report").exists()


@pytest.mark.parametrize("command", ["status", "report", "dry-run", "run"])
def test_damaged_store_is_one_line_naming_repair(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 command: str) -> None:
    run = tmp_path / "runs"
    assert cli.main(["run", str(_plan(tmp_path, seeds=4)), "--runs-dir", str(run), "--no-report"]) == 0
    path = run / "env" / "results.sqlite"
    Store(path).rows()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    capsys.readouterr()
    argv = {"status": ["status", str(run / "env")], "report": ["report", str(run / "env")],
            "dry-run": ["run", str(_plan(tmp_path, seeds=4)), "--runs-dir", str(run), "--dry-run"],
            "run": ["run", str(_plan(tmp_path, seeds=4)), "--runs-dir", str(run)]}[command]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "modtransfer store repair" in err[0], err
    assert path.read_bytes() == before, "a damaged store must not be written to"
    assert not (run / "env" / "report").exists()
    assert cli.main(["store", "repair", str(run / "env")]) == 0
    assert list((run / "env").glob("results.sqlite.corrupt-*"))
    assert cli.main(["status", str(run / "env")]) == 0


def test_text_file_as_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.sqlite").write_text("these are my notes, not a database\n" * 100)
    assert cli.main(["status", str(tmp_path / "r")]) == 2
    assert cli.main(["report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("store repair" in e for e in err)


def test_ls_with_an_unknown_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ls", "variants", "--size", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size 'huge'" in err[0] and "tiny" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(_plan(tmp_path)), "--runs-dir", str(tmp_path / "runs"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]
    assert not (tmp_path / "runs").exists()


def test_every_cell_failing_exits_1_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = Path(__file__).parent / "plugins" / "raising_plugin.py"
    code = cli.main(["run", str(_plan(tmp_path, variants=["raise_in_forward"])), "--runs-dir", str(tmp_path / "runs"),
                     "--plugin", str(plugin), "--no-report", "--no-check"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 cell(s) failed" in err and "deliberate failure inside forward" in err
