"""Diagnostics and events: the detectors fire on real cases and stay quiet on a healthy cell.

Real tiny regression cells (one layer, tens of steps, one thread) trained through ``run_cell``:
a post-LN encoder with ``d_model=2`` (whose LayerNorm can only output +-(1, -1)), a learning
rate of 10 (divergence), a model that can only predict a constant (the trivial plateau), and a
healthy baseline. The collapse is also checked on PyTorch's own ``TransformerEncoderLayer``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import modtransfer.tasks  # noqa: F401  (registers the built-in tasks)
from modtransfer.core.errors import UserError
from modtransfer.core.model import build
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS, Budget, register_task
from modtransfer.run.cell import run_cell
from modtransfer.run.diagnostics import Recorder, collapse_stats
from modtransfer.run.events import blowups, collapse_event, detect, plateau_event, series
from modtransfer.run.plan import load_plan
from modtransfer.run.plan_types import Cell
from modtransfer.run.status import summarise
from modtransfer.run.store import Store

SPEC = {"d_model": 32, "n_layers": 1, "d_ff": 64}
COLLAPSE_SPEC = {"d_model": 2, "n_heads": 1, "n_layers": 1, "d_ff": 8}
Regression = TASKS.get("regression")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cell(task: str = "regression", variant: str = "baseline", spec: dict[str, Any] | None = None,
              hparams: list[dict[str, Any]] | None = None, **budget: Any) -> list[Cell]:
    plan = load_plan({"name": "diag", "size": "tiny", "seeds": [0], "tasks": [task], "spec": spec or dict(SPEC),
                      "variants": [] if variant == "baseline" else [variant],
                      "task_budget": {task: {"batch_size": 8, "diag_every": 10, **budget}},
                      **({"hparams": hparams} if hparams else {}), "wandb": {"mode": "disabled"}})
    return [c for c in plan.cells if c.variant == variant]


def train(cell: Cell, tmp_path: Path, wandb: str = "disabled") -> dict[str, Any]:
    return run_cell(cell, tmp_path, wandb_cfg={"mode": wandb}, device="cpu")


def kinds(row: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in row["events"]]


class ConstantRegression(Regression):
    """The toy regression with a model that can only predict a constant: its hidden states are
    multiplied by 0, so only the output bias learns (towards the mean target)."""

    def predict(self, model: Any, x: Tensor) -> Tensor:
        return model.project(model.encode(x) * 0.0)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """One row per case, trained once for the module (the constant task registered meanwhile only)."""
    tmp = tmp_path_factory.mktemp("diag")
    register_task("constant_regression")(ConstantRegression)
    try:
        sweep = tiny_cell(steps=80, hparams=[{"lr": 5e-3}, {"lr": 10.0}])
        healthy, diverged = sorted(sweep, key=lambda c: c.budget.lr)
        (collapsed,) = tiny_cell(variant="post_ln", spec=dict(COLLAPSE_SPEC), steps=20, diag_every=5)
        (constant,) = tiny_cell(task="constant_regression", steps=100, lr=0.05, diag_every=20)
        cases = {"healthy": healthy, "diverged": diverged, "collapsed": collapsed, "constant": constant}
        yield {name: train(c, tmp / name) for name, c in cases.items()}
    finally:
        TASKS.unregister("constant_regression")


# -- 1. representation collapse: d_model=2 post-LN -------------------------------------------------
def only_plus_minus_one(h: Tensor) -> bool:
    """Whether every position is (y, -y) with y about +-1: (a - b) / 2 / sqrt((a - b)^2 / 4 + eps),
    so |y| is under 0.99 only where the two features nearly tie."""
    flat = h.reshape(-1, 2)
    opposite = torch.allclose(flat[:, 0], -flat[:, 1], atol=1e-5)
    return bool(opposite and (flat.abs() <= 1).all() and (flat.abs() > 0.99).float().mean() > 0.9)


def flagged(h: Tensor) -> dict[str, Any] | None:
    cos, erank = collapse_stats(h.detach())
    records = [{"step": 0, "name": "hidden_cos", "layer": "encoder", "value": cos},
               {"step": 0, "name": "hidden_erank", "layer": "encoder", "value": erank}]
    return collapse_event(records)


def test_post_ln_d_model_2_is_flagged_as_representation_collapse(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["collapsed"]
    assert row["status"] == "done", row["error"]
    (event,) = [e for e in row["events"] if e["kind"] == "representation_collapse"]
    assert event["layer"] == "encoder" and "one line" in event["detail"]
    erank = series(row["diagnostics"], "hidden_erank")["encoder"]
    assert all(v <= 1.01 for _, v in erank), erank
    # the same model built through the harness's ModelSpec outputs only +-(1, -1) at initialisation
    torch.manual_seed(0)
    model = build(ModelSpec(**COLLAPSE_SPEC, residual="post", in_features=6, out_features=3, max_len=10), "encoder")
    with torch.no_grad():
        h = model.encode(torch.randn(8, 10, 6))
    assert only_plus_minus_one(h) and flagged(h) is not None


def test_torch_transformer_encoder_layer_d_model_2_collapses_and_d_model_8_does_not() -> None:
    torch.manual_seed(0)
    two = nn.TransformerEncoderLayer(d_model=2, nhead=1, dim_feedforward=8, dropout=0.0, batch_first=True)
    with torch.no_grad():
        h = two(torch.randn(8, 10, 2))
    assert only_plus_minus_one(h)
    event = flagged(h)
    assert event is not None and event["kind"] == "representation_collapse"
    eight = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    with torch.no_grad():
        assert flagged(eight(torch.randn(8, 10, 8))) is None


# -- 2. divergence names the first layer that blew up ----------------------------------------------
def test_divergence_names_the_first_layer_whose_gradient_blew_up(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["diverged"]
    assert row["status"] == "diverged", row["error"]
    (event,) = [e for e in row["events"] if e["kind"] == "divergence"]
    assert event["step"] == row["failed_step"]
    per_step = series(row["diagnostics"], "grad_norm_step")
    assert event["layer"] in per_step, (event, sorted(per_step))
    # read the blow-up from the raw per-step norms: the named layer's norm rose 10x above its step-0
    # value at the step the detail names, and no layer had risen 10x at an earlier step
    step = int(event["detail"].rsplit(" at step ", 1)[1].split()[0].rstrip(","))
    first = {layer: pts[0][1] for layer, pts in per_step.items()}
    values = dict(per_step[event["layer"]])
    assert not math.isfinite(values[step]) or values[step] > 10 * first[event["layer"]]
    for layer, pts in per_step.items():
        assert all(math.isfinite(v) and v <= 10 * first[layer] for s, v in pts if s < step), layer


def test_the_earliest_blow_up_wins_over_a_larger_later_one() -> None:
    per_layer = {"encoder.0": [(0, 1.0), (5, 1.2), (7, 1e6)], "encoder.1": [(0, 1.0), (5, 50.0), (7, 60.0)],
                 "out_proj": [(0, 2.0), (5, math.nan)]}
    assert [(layer, s) for layer, s, _ in blowups(per_layer, since=0)] == [
        ("out_proj", 5), ("encoder.1", 5), ("encoder.0", 7)]  # at step 5: NaN before a 50x rise


# -- 3. plateau at the trivial score ---------------------------------------------------------------
def test_constant_prediction_model_is_flagged_as_plateau(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["constant"]
    assert row["status"] == "done", row["error"]
    (event,) = [e for e in row["events"] if e["kind"] == "plateau"]
    assert event["step"] is None and "never left" in event["detail"], event
    trivial = Regression().trivial_score()
    assert row["primary_value"] >= 0.9 * trivial  # the task's own line: it never left the plateau


def test_plateau_left_at_the_step_the_loss_stays_below_the_task_line() -> None:
    curve = [{"step": s, "train_loss": x} for s, x in
             [(10, 6.0), (20, 3.6), (30, 3.5), (40, 3.45), (50, 3.52), (60, 3.0), (70, 3.3), (80, 2.0), (90, 1.5)]]
    event = plateau_event(curve, level=3.5, fraction=0.9, steps=90)
    assert event is not None and event["step"] == 80, event  # 3.0 at 60 is below 3.15, but 70 is back above
    fast = [{"step": s, "train_loss": x} for s, x in [(10, 6.0), (20, 3.5), (30, 2.0), (40, 1.0), (50, 0.8)]]
    assert plateau_event(fast, level=3.5, fraction=0.9, steps=50) is None


# -- 4. a healthy cell raises no event ---------------------------------------------------------------
def test_healthy_baseline_raises_no_event_and_records_every_measure(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["healthy"]
    assert row["status"] == "done" and row["primary_value"] < 0.9 * Regression().trivial_score(), row["error"]
    assert row["events"] == []
    names = {(d["name"], d["layer"]) for d in row["diagnostics"]}
    for want in [("grad_norm", ""), ("grad_norm", "encoder.0"), ("update_ratio", "encoder.0"),
                 ("attn_entropy", "encoder.0"), ("resid_rms", "encoder.0"), ("ffn_zero_frac", "encoder.0"),
                 ("ffn_dead_frac", "encoder.0"), ("hidden_cos", "encoder"), ("hidden_erank", "encoder")]:
        assert want in names, want
    assert sorted({d["step"] for d in row["diagnostics"]}) == list(range(0, 80, 10))
    entropy = [v for _, v in series(row["diagnostics"], "attn_entropy")["encoder.0"]]
    assert all(0.0 < v <= 1.0 for v in entropy)
    ratio = [v for _, v in series(row["diagnostics"], "update_ratio")["encoder.0"]]
    assert all(1e-5 < v < 0.5 for v in ratio), ratio


# -- the store, status and the report --------------------------------------------------------------
def test_store_keeps_diagnostics_and_events_and_status_shows_them(rows: dict[str, dict[str, Any]],
                                                                  tmp_path: Path) -> None:
    store = Store(tmp_path / "results.sqlite")
    for r in rows.values():
        assert store.record(r)
    diags, events = store.diagnostics(), store.events()
    for r in rows.values():
        assert len(diags.get(r["cell_id"], [])) == len(r["diagnostics"])
        assert [e["kind"] for e in events.get(r["cell_id"], [])] == kinds(r)
    assert "diagnostics" not in store.rows()[0]
    text = summarise(tmp_path)
    assert "events in 3 cell(s): divergence 1, plateau 1, representation_collapse 1" in text, text
    assert f"divergence@{rows['diverged']['failed_step']}" in text
    assert store.delete("diverged") == 1 and rows["diverged"]["cell_id"] not in store.events()


def test_old_store_without_the_tables_still_opens(tmp_path: Path, rows: dict[str, dict[str, Any]]) -> None:
    import sqlite3

    from modtransfer.run.store_schema import SCHEMA

    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)  # the tables an older version created: no diagnostics, no events
    con.close()
    assert Store(path, readonly=True).events() == {} and Store(path, readonly=True).diagnostics() == {}
    assert Store(path).record(rows["collapsed"])
    assert kinds(rows["collapsed"]) == [e["kind"] for e in Store(path).events()[rows["collapsed"]["cell_id"]]]


def test_report_section_what_happened(rows: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    from modtransfer.reports.happened import happened_section
    from modtransfer.reports.summary import analyse_run

    store = Store(tmp_path / "results.sqlite")
    for name in ("healthy", "diverged"):
        store.record(rows[name])
    store.set_meta("tasks", {"regression": Regression().gate_info()})
    section = happened_section(analyse_run(tmp_path), tmp_path, tmp_path)
    assert section is not None and section.id == "what-happened"
    tables = {b.id: b for b in section.blocks if hasattr(b, "headers")}
    (flag,) = tables["flagged-cells"].rows
    assert "divergence at step" in flag[2] and "lr=10.0" in flag[0]
    images = [b for b in section.blocks if hasattr(b, "file")]
    assert len(images) == 1 and (tmp_path / images[0].file).stat().st_size > 10_000
    escape = {r[0]: r for r in tables["plateau-escape"].rows}
    assert len(escape) == 2  # one row per learning rate of the sweep


def test_diagnostics_reach_wandb_on_the_trainer_step(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("wandb_reader", Path(__file__).with_name("test_wandb.py"))
    assert spec is not None and spec.loader is not None
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)  # its offline .wandb reader: offline_runs, read_run
    saved = dict(os.environ)
    try:
        (cell,) = tiny_cell(steps=12, diag_every=5)
        row = train(cell, tmp_path, wandb="offline")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert row["status"] == "done", row["error"]
    (folder,) = reader.offline_runs(tmp_path)[cell.cell_id]
    run = reader.read_run(folder)
    logged = [h for h in run["history"] if "diag/grad_norm" in h]
    assert [h["trainer/global_step"] for h in logged] == [0, 5, 10]
    assert "diag/attn_entropy/encoder.0" in logged[0] and run["summary"].get("events") == "none"


# -- the measurements on every topology, and their safety -----------------------------------------
def one_step(model: nn.Module, recorder: Recorder, *inputs: Any, **kw: Any) -> None:
    recorder.begin(0)
    model(*inputs, **kw).float().pow(2).mean().backward()
    recorder.after_backward(0)
    recorder.end()


@pytest.mark.parametrize("topology", ["decoder", "encoder_decoder"])
def test_attention_entropy_is_one_when_attention_is_uniform(topology: str) -> None:
    """W_q = 0 makes every query attend uniformly to the keys it may see (causal, unpadded), so the
    normalised entropy must be exactly 1 in self- and cross-attention: the masks are read right."""
    from modtransfer.variants.baseline.attention import AttentionBase

    torch.manual_seed(0)
    model = build(ModelSpec(d_model=16, n_heads=2, n_layers=2, d_ff=32, vocab_size=40, max_len=12), topology)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AttentionBase):
                m.branch_weights()["score"][0].zero_()
    x = torch.randint(0, 40, (3, 12))
    pad = torch.zeros(3, 12, dtype=torch.bool)
    pad[:, 9:] = True
    rec = Recorder(model, every=1)
    if topology == "decoder":
        one_step(model, rec, x, x_pad=pad)
    else:
        one_step(model, rec, x, x, x_pad=pad, y_pad=pad)
    names = ["attn_entropy"] + (["attn_entropy_cross"] if topology == "encoder_decoder" else [])
    for name in names:
        values = [v for pts in series(rec.records, name).values() for _, v in pts]
        assert len(values) == (4 if topology == "encoder_decoder" and name == "attn_entropy" else 2), name
        assert all(abs(v - 1.0) < 1e-5 for v in values), (name, values)


def test_a_failing_measurement_never_fails_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import modtransfer.run.diagnostics as diagnostics

    def broken(h: Tensor, sample: int = 0) -> tuple[float, float]:
        raise RuntimeError("boom")

    monkeypatch.setattr(diagnostics, "collapse_stats", broken)
    model = build(ModelSpec(**SPEC, in_features=4, out_features=2, max_len=8), "encoder")
    rec = Recorder(model, every=1)
    one_step(model, rec, torch.randn(2, 8, 4))
    assert any("boom" in s for s in rec.skipped)
    assert {"grad_norm", "attn_entropy", "resid_rms"} <= {r["name"] for r in rec.records}
    assert "hidden_erank" not in {r["name"] for r in rec.records}


# -- budget and imports ------------------------------------------------------------------------------
def test_diag_every_is_validated_and_kept_out_of_cell_ids() -> None:
    with pytest.raises(UserError, match="diag_every"):
        Budget(diag_every=-1)
    assert "diag_every" not in Budget().to_dict()
    (a,), (b,) = tiny_cell(steps=10, diag_every=0), tiny_cell(steps=10, diag_every=7)
    assert a.cell_id == b.cell_id and (a.budget.diag_every, b.budget.diag_every) == (0, 7)


def test_diagnostics_do_not_import_lightning() -> None:
    code = ("import sys, modtransfer.run.diagnostics, modtransfer.run.events, modtransfer.reports.happened; "
            "print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_detect_orders_events_by_step() -> None:
    records = [{"step": s, "name": "hidden_erank", "layer": "encoder", "value": 1.0} for s in (0, 10)]
    records += [{"step": 10, "name": "ffn_dead_frac", "layer": "encoder.0", "value": 0.75}]
    row = {"status": "done", "curve": [], "steps": 20}
    assert [(e["kind"], e["step"]) for e in detect(row, records)] == [
        ("representation_collapse", 10), ("dead_units", 10)]
