"""``modtransfer bench speed``: the table has its columns and rows (no timing is asserted).

The end-to-end run is the command's smallest form (tiny size, a couple of steps, one repeat,
the baseline only) as a real subprocess; a second, in-process run hides x-transformers to
check that its columns are skipped with a note; a third trains every path in bf16 (where the CPU
has it). The per-fit arithmetic (ratios, MFU, bf16 speed-up) is checked on made-up step times.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modtransfer.bench import speed as bench_speed
from modtransfer.bench.speed_loops import FitTimes
from modtransfer.bench.speed_table import aggregate, summarise_fit
from modtransfer.core.errors import UserError
from modtransfer.core.precision import cpu_bf16_flag
from modtransfer.tasks.lm import LanguageModelling

COLUMNS = ["variant", "params", "GFLOP/tok", "harness tok/s", "plain tok/s", "harness/plain", "x-tf tok/s",
           "ours/x-tf", "x-tf flash tok/s", "ours/x-tf flash", "MFU", "peak MiB", "start-up s"]
SMALLEST = ["--size", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1", "--variants", "baseline"]


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    """The shared task cache (as in test_tasks); the LM data is fetched once, or the test skips."""
    env = os.environ.get("MODTRANSFER_CACHE")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".cache" / "modtransfer"
    path.mkdir(parents=True, exist_ok=True)
    try:
        LanguageModelling(cache_dir=path).prepare()
    except UserError as exc:
        pytest.skip(f"the LM data cannot be prepared here: {exc}")
    return path


def table_lines(out: str) -> tuple[str, list[str]]:
    """The table's header line and its body rows."""
    lines = out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("variant "))
    body = []
    for line in lines[i + 2:]:
        if not line.strip():
            break
        body.append(line)
    return lines[i], body


@pytest.mark.slow  # about 30 s: run with -m slow
def test_smallest_run_prints_the_table(cache_dir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "speed.json"
    env = {**os.environ, "MODTRANSFER_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "modtransfer", "bench", "speed", *SMALLEST, "--json", str(out_json)],
                          capture_output=True, text=True, env=env, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, body = table_lines(proc.stdout)
    for column in COLUMNS:
        assert column in header
    assert [row.split()[0] for row in body] == ["baseline"]
    for fragment in ("matmul peak:", "GFLOP/s", "peak MiB:", "start-up s:", "`modtransfer ls variants`", "targets:"):
        assert fragment in proc.stdout
    res = json.loads(out_json.read_text())
    row = res["rows"]["baseline"]
    for key in ("harness_tok_s", "plain_tok_s", "harness_over_plain", "mfu", "startup_s", "flops_per_token", "params"):
        assert row[key] is not None and row[key] > 0, key
    assert res["ls_s"] > 0 and res["peak_flops"] > 0 and res["cold_startup_s"] > 0
    assert res["precision"] == "fp32" and res["peak"]["dtype"] == "float32" and "precision fp32" in proc.stdout
    assert "bf16/fp32" not in header
    assert row["peak_mib"] is not None, row.get("memory_method")
    if bench_speed.xtransformers_version():
        assert row["xtf_tok_s"] > 0 and row["ours_over_xtf"] > 0 and row["ours_over_xtf_flash"] > 0
    else:
        assert "x-transformers not installed" in proc.stdout


def test_without_xtransformers_the_columns_are_skipped(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "x_transformers", None)  # import x_transformers now raises ImportError
    assert bench_speed.xtransformers_version() is None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench_speed.main([*SMALLEST, "--variants", "swiglu", "--no-memory", "--no-ls",
                               "--cache-dir", str(cache_dir)])
    text = out.getvalue()
    print(text)
    assert rc == 0
    assert "x-transformers not installed" in text
    header, body = table_lines(text)
    assert [row.split()[0] for row in body] == ["baseline", "swiglu"]
    base = dict(zip(COLUMNS, body[0].split(), strict=False))
    assert base["x-tf tok/s"] == "-" and base["ours/x-tf"] == "-"
    assert float(base["harness tok/s"]) > 0 and float(base["harness/plain"]) > 0


@pytest.mark.skipif(cpu_bf16_flag() is None, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_bf16_run_has_the_speedup_column(cache_dir: Path, tmp_path: Path) -> None:
    """Every path in bf16, plus our plain loop in fp32 for the bf16/fp32 column; the peak in bf16."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench_speed.main([*SMALLEST, "--precision", "bf16", "--no-memory", "--no-ls", "--cache-dir", str(cache_dir),
                               "--json", str(tmp_path / "bf16.json")])
    text = out.getvalue()
    print(text)
    assert rc == 0 and "precision bf16" in text
    header, body = table_lines(text)
    assert "bf16/fp32" in header
    res = json.loads((tmp_path / "bf16.json").read_text())
    assert res["precision"] == "bf16" and res["peak"]["dtype"] == "bfloat16"
    assert res["rows"]["baseline"]["bf16_speedup"] > 0


def test_fit_summary_arithmetic() -> None:
    """Per-iteration ratios and MFU from made-up step times (the warm-up iteration is left out)."""
    times = FitTimes(
        harness=[9.0, 2.0, 2.0, 4.0], plain={"plain": [9.0, 1.0, 1.0, 2.0], "x-tf": [9.0, 2.0, 3.0, 4.0]},
        tokens=[100, 100, 100, 100],
    )
    s = summarise_fit(times, flops_per_token=2.0, warmup=1, steps=3, startup_s=0.5, peak_flops=1e3)
    assert s["harness_over_plain"] == pytest.approx(0.5)
    assert s["harness_tok_s"] == pytest.approx(50.0)
    assert s["plain_tok_s"] == pytest.approx(100.0)
    assert s["ours_over_xtf"] == pytest.approx(2.0)
    assert s["mfu"] == pytest.approx(3 * 2.0 * 100 / 2.0 / 1e3)
    agg = aggregate([s, {**s, "harness_over_plain": 0.7}, {**s, "harness_over_plain": 0.9}])
    assert agg["harness_over_plain"] == pytest.approx(0.7)


def test_bf16_speedup_is_ours_in_fp32_over_ours_in_bf16() -> None:
    times = FitTimes(harness=[1.0, 1.0, 1.0], plain={"plain": [9.0, 1.0, 2.0], "plain fp32": [9.0, 3.0, 4.0]},
                                 tokens=[10, 10, 10])
    s = summarise_fit(times, flops_per_token=1.0, warmup=1, steps=2, startup_s=None, peak_flops=1.0)
    assert s["bf16_speedup"] == pytest.approx(2.5)  # median of 3/1 and 4/2
    assert "bf16_speedup" not in summarise_fit(
        FitTimes([1.0, 1.0], {"plain": [1.0, 1.0]}, [1, 1]), 1.0, 0, 2, None, 1.0)
