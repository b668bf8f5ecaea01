"""Contract properties of the optimiser variants (variants/optimizers.py), each built as a cell builds
it (``build_optimizer`` from the resolved variant's recipe): Muon orthogonalises hidden matrices and
leaves the rest to AdamW, Adafactor factors a matrix's second moment, Lion's update is sign-valued
with magnitude lr, schedule-free AdamW is evaluated at its averaged point by the training loop."""

from __future__ import annotations

import math

import pytest
import torch

from modtransfer.core.optim import Chained, build_optimizer, hidden_parameters
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS, Budget
from modtransfer.core.variant import resolve
from modtransfer.run.cell import run_cell
from modtransfer.run.plan import load_plan
from modtransfer.run.training import CellModule, make_trainer, recipe_with_schedule

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}
CPU = torch.device("cpu")


def _model(variant: str, topology: str = "decoder"):
    spec = resolve(variant, ModelSpec(**TINY, vocab_size=50, max_len=16)).spec
    from modtransfer.core.model import build

    return build(spec, topology, seed=0), spec.recipe


def _random_grads(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest():
    model, recipe = _model("muon", "encoder_decoder")
    opt = build_optimizer(model, recipe, Budget(), CPU)
    assert isinstance(opt, Chained)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    every = {id(p) for p in model.parameters()}
    assert in_muon == hidden_parameters(model) and not in_muon & in_adamw and in_muon | in_adamw == every
    assert id(model.embedding.weight) in in_adamw   # embeddings (and the tied head) stay with AdamW
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert len(in_muon) == 4 + 7   # encoder: qkv, out, w1, w2; decoder: qkv, out, cross q, kv, out, w1, w2
    assert len(opt.param_groups) == len(muon.param_groups) + len(adamw.param_groups)


def test_a_muon_update_on_a_matrix_has_singular_values_near_one():
    model, recipe = _model("muon(adjust_lr='original')")
    budget = Budget(lr=1.0e-2, weight_decay=0.0)
    opt = build_optimizer(model, recipe, budget, CPU)
    w = model.decoder.blocks[0].ffn.sublayer.w1.weight   # [d_ff, d_model] = [64, 32]
    before = w.detach().clone()
    # a badly conditioned gradient: singular values from 0.1 to 10
    u, _ = torch.linalg.qr(torch.randn(64, 32, generator=torch.Generator().manual_seed(1)))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(2)))
    _random_grads(model, 0)
    w.grad = u @ torch.diag(torch.logspace(-1, 1, 32)) @ v.T
    opt.step()
    scale = budget.lr * math.sqrt(max(1.0, 64 / 32))   # torch's "original" lr adjustment
    sv = torch.linalg.svdvals((before - w.detach()) / scale)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv   # orthogonalised: every direction moves about equally
    assert torch.linalg.svdvals(w.grad).max() / torch.linalg.svdvals(w.grad).min() > 50


def test_adafactor_keeps_a_matrix_second_moment_as_row_and_column_factors():
    model, recipe = _model("adafactor")
    opt = build_optimizer(model, recipe, Budget(), CPU)
    assert isinstance(opt, torch.optim.Adafactor)
    _random_grads(model, 0)
    opt.step()
    w = model.decoder.blocks[0].ffn.sublayer.w1.weight
    state = opt.state[w]
    assert state["row_var"].shape == (64, 1) and state["col_var"].shape == (1, 32)
    assert not any(torch.is_tensor(v) and v.shape == w.shape for v in state.values())   # no full-size moment
    gain = model.decoder.blocks[0].ffn.norm.weight
    assert opt.state[gain]["variance"].shape == gain.shape


def test_lion_moves_every_coordinate_by_exactly_lr():
    model, recipe = _model("lion(lr_scale=0.5)")
    budget = Budget(lr=2.0e-3, weight_decay=0.0)
    opt = build_optimizer(model, recipe, budget, CPU)
    for step in range(3):   # past the first step (where AdamW's update is sign-like too)
        before = [p.detach().clone() for p in model.parameters()]
        _random_grads(model, step)
        opt.step()
        for p, b in zip(model.parameters(), before, strict=True):
            moved = (p.detach() - b).abs()
            assert torch.allclose(moved, torch.full_like(moved, 1.0e-3), rtol=1e-3, atol=1e-7)


def test_lion_keeps_lr_times_weight_decay_of_the_budget():
    model, recipe = _model("lion(lr_scale=0.5)")
    budget = Budget(lr=2.0e-3, weight_decay=0.1)
    opt = build_optimizer(model, recipe, budget, CPU)
    w, gain = model.decoder.blocks[0].ffn.sublayer.w1.weight, model.decoder.blocks[0].ffn.norm.weight
    w0, g0 = w.detach().clone(), gain.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)   # sign(0) = 0: only the decay moves a parameter
    opt.step()
    assert torch.allclose(w.detach(), w0 * (1 - 2.0e-3 * 0.1)) and torch.equal(gain.detach(), g0)


def _trained_module(variant: str, steps: int):
    """A regression CellModule of ``variant`` after ``steps`` Lightning training steps."""
    plan = load_plan({"name": "o", "size": "tiny", "seeds": 1, "variants": [variant], "tasks": ["regression"],
                      "spec": TINY, "budget": {"steps": steps, "batch_size": 4, "eval_batches": 1, "eval_every": 0},
                      "wandb": {"mode": "disabled"}})
    cell = next(c for c in plan.cells if c.variant != "baseline")
    task = TASKS.get("regression")(cell.task_config)
    task.prepare()
    spec = task.configure_spec(cell.spec)
    from modtransfer.core.model import build
    from modtransfer.run.training import make_datamodule

    module = CellModule(build(spec, task.topology, seed=0), task, cell.budget,
                        task.val_batches(0, 4, 1), 1, 0.0, recipe=spec.recipe)
    make_trainer(cell.budget, "cpu", None, 1).fit(module, datamodule=make_datamodule(task, 0, 4))
    return module, task


def test_schedule_free_is_evaluated_at_its_averaged_point(monkeypatch, one_thread):
    pytest.importorskip("schedulefree")
    module, task = _trained_module("schedule_free_adamw", 5)
    opt = module._optimizer
    beta1 = opt.param_groups[0]["betas"][0]
    params = list(module.model.parameters())
    y = [p.detach().clone() for p in params]                  # train mode: the gradient's point
    x = [(yi - (1 - beta1) * opt.state[p]["z"]) / beta1 for yi, p in zip(y, params, strict=True)]
    seen = []
    real = task.evaluate
    monkeypatch.setattr(task, "evaluate", lambda model, b: seen.append(
        [p.detach().clone() for p in model.parameters()]) or real(model, b))
    module.evaluate(5)
    assert all(torch.allclose(s, xi, atol=1e-6) for s, xi in zip(seen[0], x, strict=True))
    assert max(float((s - yi).abs().max()) for s, yi in zip(seen[0], y, strict=True)) > 1e-4   # not y
    assert all(torch.allclose(p.detach(), yi, atol=1e-6) for p, yi in zip(params, y, strict=True))   # back to y after


def test_schedule_free_runs_without_the_budget_schedule_and_muon_with_it(one_thread):
    pytest.importorskip("schedulefree")
    model, recipe = _model("schedule_free_adamw")
    budget = Budget(lr=1.0e-3, steps=10, warmup=0.5, schedule="cosine")
    config = recipe_with_schedule(model, recipe, budget, CPU)
    sched = config["lr_scheduler"]["scheduler"]
    assert [sched.lr_lambdas[0](s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert config["optimizer"].param_groups[0]["warmup_steps"] == 5   # its own warm-up, the budget's length
    model, recipe = _model("muon")
    sched = recipe_with_schedule(model, recipe, budget, CPU)["lr_scheduler"]["scheduler"]
    for _ in range(3):
        sched.optimizer.step()
        sched.step()
    lrs = [g["lr"] for g in sched.optimizer.param_groups]
    assert len(lrs) == 2 and lrs == pytest.approx([1.0e-3 * 4 / 5] * 2)   # one schedule: Muon's groups and AdamW's


@pytest.mark.parametrize("variant", ["muon", "adafactor", "lion", "schedule_free_adamw"])
def test_each_optimizer_variant_trains_a_cell(tmp_path, one_thread, variant):
    if variant == "schedule_free_adamw":
        pytest.importorskip("schedulefree")
    plan = load_plan({"name": "o", "size": "tiny", "seeds": 1, "variants": [variant], "tasks": ["regression"],
                      "spec": TINY, "budget": {"steps": 6, "batch_size": 4, "eval_batches": 1, "eval_every": 0},
                      "wandb": {"mode": "disabled"}})
    rows = {c.variant: run_cell(c, tmp_path, wandb_cfg={"mode": "disabled"}) for c in plan.cells}
    assert all(r["status"] == "done" for r in rows.values()), rows[variant]["error"]
    assert rows[variant]["spec"]["recipe"]["optimizer"] == variant
    mine, base = ([p["train_loss"] for p in r["curve"] if "train_loss" in p] for r in (rows[variant], rows["baseline"]))
    assert mine[0] == base[0] and mine[1:] != base[1:]   # the same start, a different optimiser after it
