"""The training recipe as a modification (issue 26 part 3): the baseline's ids and training unchanged,
recipe fields in the cell id only when they differ, patches that compose or conflict, bad input,
the auxiliary-loss hook, stacking refused with its reason, the report's slot."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from modtransfer.cli.commands import main
from modtransfer.core.errors import ConflictError, UserError
from modtransfer.core.model import build
from modtransfer.core.recipe import AUX_LOSSES, RECIPE_SLOTS, Recipe, recipe_slot, register_aux_loss
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS
from modtransfer.core.variant import VARIANTS, register_variant, resolve
from modtransfer.reports.names import registered_slot
from modtransfer.reports.table import _slot
from modtransfer.run.cell import run_cell
from modtransfer.run.plan import load_plan
from modtransfer.run.stacking import describe_stacking, group_cells, why_not_stackable
from modtransfer.run.training import CellModule

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_STORE = ROOT / "reports" / "examples" / "transfer-cpu" / "results.sqlite"
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}

# cell ids of the shipped transfer-cpu plan at seed 0, as in its committed store (written before recipes)
PINNED_IDS = {"lm": "7c7379e70015c980a208", "mt": "47a48cfc994e0268dd3b", "regression": "b882c25db658854d1e56"}
# the first 8 training losses of a baseline regression cell (tiny, 8 steps, seed 0), before recipes existed
PINNED_LOSSES = [5.7638468742370605, 5.170413017272949, 5.113713264465332, 4.882321357727051,
                 4.712308406829834, 4.439490795135498, 4.256041526794434, 4.132648944854736]


def _plan(**over):
    raw = {"name": "recipe", "size": "tiny", "seeds": 1, "variants": [], "tasks": ["regression"],
           "budget": {"steps": 8, "eval_every": 0}, "wandb": {"mode": "disabled"}}
    raw.update(over)
    return load_plan(raw)


def test_baseline_cell_ids_of_the_shipped_plan_are_unchanged():
    plan = load_plan(str(ROOT / "configs" / "bench" / "transfer-cpu.yaml"))
    ids = {c.task: c.cell_id for c in plan.all_cells if c.variant == "baseline" and c.seed == 0}
    assert ids == PINNED_IDS
    stored = {r[0] for r in sqlite3.connect(EXAMPLE_STORE).execute("SELECT cell_id FROM cells")}
    assert set(PINNED_IDS.values()) <= stored   # the committed example resumes: its cells are found done
    assert all("recipe" not in c.spec.to_dict() for c in plan.all_cells)


def test_baseline_training_is_unchanged(tmp_path, one_thread):
    cell = _plan().cells[0]
    assert cell.variant == "baseline" and cell.cell_id == "1676df27d7c9402c2494"
    row = run_cell(cell, tmp_path, wandb_cfg={"mode": "disabled"})
    assert row["status"] == "done"
    assert [p["train_loss"] for p in row["curve"] if "train_loss" in p] == pytest.approx(PINNED_LOSSES, abs=1e-6)


def test_recipe_enters_the_spec_dict_and_cell_id_only_when_it_differs():
    base = ModelSpec()
    assert "recipe" not in base.to_dict()
    assert ModelSpec(recipe=Recipe(optimizer="adamw")).digest() == base.digest()
    lion = base.replace(recipe=Recipe(optimizer="lion", options={"lr_scale": 0.1}))
    assert lion.to_dict()["recipe"] == {"optimizer": "lion", "options": {"lr_scale": 0.1}}
    assert lion.digest() != base.digest()
    # round trips through JSON (the store, W&B) and from_dict (a plan's spec:)
    back = ModelSpec.from_dict(json.loads(json.dumps(lion.to_dict())))
    assert back == lion and back.recipe.option("lr_scale") == 0.1
    plan = _plan(variants=["lion", "lion(lr_scale=0.1)"])
    ids = {c.variant: c.cell_id for c in plan.cells}
    assert len(set(ids.values())) == 3 and ids["baseline"] == "1676df27d7c9402c2494"


def test_recipe_patches_compose_per_field_and_conflict_by_name():
    with pytest.raises(ConflictError, match=r"'muon' and 'lion' both change ModelSpec\.recipe\.optimizer"):
        resolve("muon+lion", ModelSpec())
    rv = resolve("swiglu+muon", ModelSpec())
    assert rv.spec.ffn == "glu" and rv.spec.recipe.optimizer == "muon" and rv.slots == ["ffn", "optimizer"]


@pytest.mark.parametrize("bad, message", [
    ({"optimizer": "nadam"}, "unknown optimizer 'nadam'"),
    ({"optimizer": "lion", "options": {"lr_scael": 0.1}}, "takes no option 'lr_scael' (did you mean 'lr_scale'?)"),
    ({"optimizer": "muon", "scope": "all"}, "cannot train scope 'all'"),
    ({"scope": "embeddings"}, "Recipe.scope must be one of all, hidden"),
    ({"optimizr": "lion"}, "unknown field 'optimizr' (did you mean 'optimizer'?)"),
    ({"aux_losses": {"nope": 1.0}}, "unknown auxiliary loss 'nope'"),
])
def test_a_bad_recipe_is_one_clear_line_before_training(tmp_path, capsys, bad, message):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "t", "size": "tiny", "seeds": 1, "tasks": ["regression"],
                                    "variants": [], "spec": {**TINY, "recipe": bad}}))
    assert main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def hidden_l2():
    """A test auxiliary loss (the mean square of the last stack's output) and a variant adding it."""
    @register_aux_loss("test_hidden_l2")
    def make(model):
        seen = {}
        stack = model.decoder if model.decoder is not None else model.encoder
        handle = stack.register_forward_hook(lambda mod, args, out: seen.__setitem__("h", out))
        make.handles.append(handle)
        return lambda batch: seen["h"].pow(2).mean()

    make.handles = []

    @register_variant("test_hidden_l2", slot="loss")
    def variant(spec, weight=0.5):
        return spec.replace(recipe=spec.recipe.with_aux_loss("test_hidden_l2", weight))

    yield make
    AUX_LOSSES.unregister("test_hidden_l2")
    VARIANTS.unregister("test_hidden_l2")


def test_an_auxiliary_loss_joins_the_training_loss(hidden_l2, one_thread):
    rv = resolve("test_hidden_l2(weight=0.5)+muon", ModelSpec(**TINY, in_features=3, out_features=1))
    assert dict(rv.spec.recipe.aux_losses) == {"test_hidden_l2": 0.5} and rv.spec.recipe.optimizer == "muon"
    task = TASKS.get("regression")({})
    task.prepare()
    spec = task.configure_spec(rv.spec)
    model = build(spec, task.topology, seed=0)
    module = CellModule(model, task, task.default_budget, [], 1, 0.0, recipe=spec.recipe)
    batch = next(iter(task.train_batches(0, 4)))
    total = module.training_step(batch, 0).detach()
    with torch.no_grad():
        own = task.loss(model, batch)
        expected = own + 0.5 * model.encode(batch["x"]).pow(2).mean()   # regression: an encoder
    assert float(total) == pytest.approx(float(expected), rel=1e-5) and float(total) > float(own) + 1e-3
    assert float(module._loss_sum) == pytest.approx(float(own), rel=1e-6)   # the logged loss is the task's own


def test_recipe_cells_train_alone_with_the_reason_and_the_dry_run_says_so(tmp_path, capsys, hidden_l2):
    plan = _plan(seeds=3, variants=["lion", "test_hidden_l2"])
    groups = group_cells(plan.cells, stack="auto", device="cpu")
    by_variant = {g[0].variant: len(g) for g in groups}
    assert by_variant["baseline"] == 3 and by_variant["lion"] == 1 and by_variant["test_hidden_l2"] == 1
    lion = next(c for c in plan.cells if c.variant == "lion")
    assert "optimizer lion" in why_not_stackable(lion)
    lines = "\n".join(describe_stacking(plan.cells, "auto", "cpu"))
    assert "regression/lion: optimizer lion" in lines and "regression/test_hidden_l2: auxiliary loss" in lines
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "size": "tiny", "seeds": 3, "tasks": ["regression"],
                                    "variants": ["lion"], "spec": TINY, "wandb": {"mode": "disabled"}}))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert "one seed at a time: regression/lion: optimizer lion" in capsys.readouterr().out


def test_the_report_slot_of_each_recipe_variant_is_the_one_it_declares(hidden_l2):
    base = ModelSpec().to_dict()
    names = [n for n in VARIANTS.names() if VARIANTS.entry(n).meta["slot"] in RECIPE_SLOTS]
    assert {"muon", "adafactor", "lion", "schedule_free_adamw", "test_hidden_l2"} <= set(names)
    for name in names:
        spec = resolve(name, ModelSpec()).spec.to_dict()
        declared = VARIANTS.entry(name).meta["slot"]
        assert recipe_slot(spec, base) == declared and _slot(spec, base) == declared, name
        assert registered_slot(name) == declared   # the report's slot column, from the registry
    assert recipe_slot(base, base) is None and _slot(base, base) == "other"


def test_an_optimizer_the_installed_packages_lack_stops_before_training():
    from modtransfer.core.recipe import OPTIMIZERS, register_optimizer

    register_optimizer("test_missing", unavailable=lambda: "torch has no torch.optim.Missing")(lambda *a: None)
    try:
        with pytest.raises(UserError, match=r"optimizer 'test_missing' cannot run here: torch has no"):
            resolve("baseline", ModelSpec(recipe={"optimizer": "test_missing"}))
    finally:
        OPTIMIZERS.unregister("test_missing")
