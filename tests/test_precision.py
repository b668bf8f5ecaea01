"""Training precision (plan ``precision``), the cached matmul peak, and ``bench precision``.

bf16 needs a processor with native bf16 instructions: tests that train in bf16 skip elsewhere.
A CPU without them is simulated by hiding its flag (the refusal path cannot run otherwise).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

import modtransfer.cli.commands as cli
from modtransfer.bench import bf16 as bench_precision
from modtransfer.core import peak, precision
from modtransfer.core.errors import UserError
from modtransfer.core.model import build
from modtransfer.core.task import TASKS
from modtransfer.run.plan import load_plan
from modtransfer.run.training import make_datamodule, make_module, make_trainer

NATIVE_BF16 = precision.cpu_bf16_flag() is not None
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
PLAN = {"name": "p", "tasks": ["regression"], "variants": ["baseline"], "seeds": 1, "budget": {"steps": 3},
        "wandb": {"mode": "disabled"}}


def test_precision_names_are_checked() -> None:
    assert precision.check_precision("bf16") == "bf16"
    with pytest.raises(UserError, match="plan.precision must be one of auto, fp32, bf16, got 'fp16'"):
        precision.check_precision("fp16")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("auto", "cuda:0") == "bf16"
    assert precision.lightning_precision("bf16") == "bf16-mixed"
    assert precision.lightning_precision("fp32") == "32-true"


def test_cells_carry_the_precision_and_auto_keeps_the_ids() -> None:
    auto = load_plan(PLAN).cells[0]
    explicit_auto = load_plan({**PLAN, "precision": "auto"}).cells[0]
    fp32 = load_plan({**PLAN, "precision": "fp32"}).cells[0]
    assert auto.precision == "auto" and auto.cell_id == explicit_auto.cell_id
    assert fp32.precision == "fp32" and fp32.cell_id != auto.cell_id
    assert load_plan({**PLAN, "precision": "fp32"}).to_dict()["precision"] == "fp32"


def _cli_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], **patch: object) -> tuple[int, str]:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**PLAN, **patch}))
    code = cli.main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--no-report", "--dry-run"])
    return code, capsys.readouterr().err.strip()


def test_a_bad_precision_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli_dry_run(tmp_path, capsys, precision="fp16")
    assert code == 2 and len(err.splitlines()) == 1
    assert "plan.precision must be one of auto, fp32, bf16" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, bf16 is decided by the run's device")
def test_bf16_on_a_cpu_without_it_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    code, err = _cli_dry_run(tmp_path, capsys, precision="bf16")
    assert code == 2 and len(err.splitlines()) == 1
    assert "no native bf16 instructions" in err and "use precision: fp32" in err
    with pytest.raises(UserError, match="no native bf16"):
        make_trainer(load_plan(PLAN).cells[0].budget, "cpu", None, 1, precision="bf16")


@pytest.mark.parametrize("prec", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_the_trainer_computes_in_the_cell_precision(prec: str, empty_cache: Path) -> None:
    """A short fit: the Linear layers' outputs have the precision's dtype; weights stay fp32."""
    cell = load_plan({**PLAN, "precision": prec}).cells[0]
    task = TASKS.get("regression")(cell.task_config, empty_cache)
    task.prepare()
    model = build(task.configure_spec(cell.spec), task.topology)
    seen: set[torch.dtype] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    module = make_module(model, task, cell, [], 1, 0.0)
    trainer = make_trainer(cell.budget, "cpu", None, 1, precision=cell.precision)
    trainer.fit(module, datamodule=make_datamodule(task, cell.seed, cell.budget.batch_size))
    assert module.status == "done" and trainer.global_step == 3
    assert seen == {torch.bfloat16 if prec == "bf16" else torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_matmul_peak_is_the_best_of_sizes_and_repeats() -> None:
    out = peak.measure_peak("cpu", "fp32", sizes=(64, 128), repeats=2)
    assert set(out["by_size"]) == {"64", "128"} and out["dtype"] == "float32"
    assert out["flops"] == max(out["by_size"].values()) > 0
    assert out["by_size"][str(out["n"])] == out["flops"]


def test_machine_peak_is_cached_per_key_and_only_raised(tmp_path: Path) -> None:
    first = peak.machine_peak("cpu", "fp32", tmp_path)
    path = tmp_path / "matmul_peak.json"
    key = peak.peak_key("cpu", "fp32")
    assert "torch " + torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    assert json.loads(path.read_text())[key]["flops"] == first["flops"] > 0
    data = json.loads(path.read_text())
    data[key]["flops"] = 1.0  # a cached value is used as it is ...
    path.write_text(json.dumps(data))
    assert peak.machine_peak("cpu", "fp32", tmp_path)["flops"] == 1.0
    assert peak.machine_peak("cpu", "fp32", tmp_path, remeasure=True)["flops"] > 1.0  # ... until measured again
    data[key]["flops"] = 1e30
    path.write_text(json.dumps(data))
    assert peak.machine_peak("cpu", "fp32", tmp_path, remeasure=True)["flops"] == 1e30  # a lower reading never wins


@needs_bf16
def test_bf16_peak_has_its_own_key(tmp_path: Path) -> None:
    assert peak.peak_key("cpu", "bf16") != peak.peak_key("cpu", "fp32")
    assert peak.machine_peak("cpu", "bf16", tmp_path)["dtype"] == "bfloat16"


@needs_bf16
def test_bench_precision_smallest_run(tmp_path: Path, empty_cache: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench_precision.main(["--tasks", "regression", "--seeds", "2", "--steps", "30", "--json",
                                   str(tmp_path / "p.json"), "--cache-dir", str(empty_cache)])
    assert rc == 0
    text = out.getvalue()
    assert "bf16 autocast vs fp32" in text and "regression" in text
    row = json.loads((tmp_path / "p.json").read_text())["tasks"][0]
    assert row["pairs"] == 2 and row["failed"] == []
    assert row["mean_abs_diff"] >= abs(row["mean_diff"]) and row["noise_sd"] > 0 and row["speedup"] > 0
    assert row["curve_abs_diff"] is not None and row["verdict"] in ("agree", "differ")


def test_compare_flags_a_gap_beyond_the_noise() -> None:
    """The verdict from made-up runs: bf16 one noise SD and more away from fp32 is 'differ'."""
    task = TASKS.get("regression")()

    def runs(shift: float) -> list[dict[str, object]]:
        return [{"status": "done", "primary": 2.0 + 0.1 * i + shift, "tok_s": 100.0,
                 "curve": {0: 7.0, 25: 3.0 + 0.2 * i + shift, 50: 2.0 + 0.2 * i + shift}} for i in range(3)]

    same = bench_precision.compare(task, {"fp32": runs(0.0), "bf16": runs(0.001)})
    assert same["verdict"] == "agree" and same["mean_diff"] == pytest.approx(0.001)
    far = bench_precision.compare(task, {"fp32": runs(0.0), "bf16": runs(1.0)})
    assert far["verdict"] == "differ" and far["mean_abs_diff"] == pytest.approx(1.0)


@pytest.mark.parametrize("masks", ["causal", "causal+pad+bias"])
def test_bf16_attention_on_cpu_is_the_same_softmax(masks: str) -> None:
    """bf16 on a CPU takes the explicit-matmul path: the fp32 result up to bf16 rounding, still causal."""
    from modtransfer.core.spec import ModelSpec
    from modtransfer.variants.baseline.attention import MultiHeadAttention, explicit_is_faster

    assert explicit_is_faster(torch.zeros(1, dtype=torch.bfloat16)) and not explicit_is_faster(torch.zeros(1))
    torch.manual_seed(0)
    attn = MultiHeadAttention(ModelSpec(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=50, max_len=16),
                              causal=True).eval()
    x = torch.randn(3, 16, 32)
    kw: dict[str, torch.Tensor] = {}
    if masks != "causal":
        kw = {"pad_mask": torch.zeros(3, 16, dtype=torch.bool).index_fill_(1, torch.tensor([2, 5]), True),
              "bias": torch.randn(2, 16, 16)}
    want = attn(x, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(x, **kw)
        later = x.clone()
        later[:, 9:] += 1.0  # change only positions after 8
        got_later = attn(later, **kw)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.03 * want.abs().max()
    assert torch.equal(got[:, :9], got_later[:, :9])


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_a_cell_trains_in_its_plans_precision_and_records_it(name: str, tmp_path: Path) -> None:
    if name == "bf16" and not NATIVE_BF16:
        pytest.skip("this CPU has no native bf16")
    from modtransfer.run import cell as cell_mod

    seen: list[str] = []
    original = cell_mod.make_trainer

    def spy(*args, **kwargs):
        trainer = original(*args, **kwargs)
        seen.append(str(trainer.precision))
        return trainer

    cell_mod.make_trainer = spy
    try:
        plan = load_plan({**PLAN, "precision": name, "task_budget": {"regression": {"steps": 4, "batch_size": 4}}})
        row = cell_mod.run_cell(plan.cells[0], tmp_path, wandb_cfg={"mode": "disabled"}, device="cpu")
    finally:
        cell_mod.make_trainer = original
    assert row["status"] == "done", row["error"]
    assert row["env"]["precision"] == name
    assert seen == ["bf16-mixed" if name == "bf16" else "32-true"]
