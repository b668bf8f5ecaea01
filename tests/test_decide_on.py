"""The metric each task decides on (``Task.decisions``) and a plan's ``decide_on:`` override.

mt decides on per-token validation loss by default (BLEU still computed and stored); a plan
may switch it back with ``decide_on: {mt: val_bleu}``. The choice reaches the Task instance
through the cell's ``task_config`` (so every executor sees it, and cells deciding on different
metrics never share an id); bad names are one line and exit code 2 before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import modtransfer.cli.commands as cli
from modtransfer.core.errors import UserError
from modtransfer.core.task import TASKS, Decision, Task, register_task
from modtransfer.run.plan import load_plan
from modtransfer.tasks.lm import LanguageModelling
from modtransfer.tasks.mt import Translation
from modtransfer.tasks.regression import Regression

PLAN: dict[str, Any] = {"name": "decide", "size": "tiny", "seeds": 2, "variants": ["gelu"],
                        "tasks": ["regression", "mt"], "wandb": {"mode": "disabled"}}


def test_every_builtin_task_declares_margin_and_noise_per_decidable_metric() -> None:
    for name in ("regression", "lm", "mt"):
        cls = TASKS.get(name)
        assert cls.decisions and cls.primary_metric in cls.decisions
        for metric, d in cls.decisions.items():
            assert d.margin > 0 and d.noise_sd > 0 and d.trivial_name, (name, metric)
        default = cls.decisions[cls.primary_metric]   # the class attributes other code reads
        assert (cls.margin, cls.noise_sd, cls.higher_is_better) == (default.margin, default.noise_sd,
                                                                   default.higher_is_better)


def test_mt_decides_on_validation_loss_and_can_decide_on_bleu() -> None:
    mt = Translation()
    assert (mt.primary_metric, mt.higher_is_better, mt.margin) == ("val_loss", False, 0.02)
    assert mt.config["decide_on"] == "val_loss"      # recorded: in every mt cell id
    bleu = Translation({"decide_on": "val_bleu"})
    assert (bleu.primary_metric, bleu.higher_is_better, bleu.margin, bleu.noise_sd) == ("val_bleu", True, 0.5, 0.26)
    assert "copying the source" in bleu.trivial_name and "bigram" in mt.trivial_name
    assert bleu.describe()["primary_metric"] == "val_bleu"
    # the instance's choice never leaks into the class (other cells, the listing)
    assert (Translation.primary_metric, Translation.margin, Translation.higher_is_better) == ("val_loss", 0.02, False)


def test_a_task_with_one_decidable_metric_leaves_its_config_and_ids_alone() -> None:
    assert "decide_on" not in LanguageModelling().config
    assert LanguageModelling({"decide_on": "val_loss"}).config == LanguageModelling().config
    with pytest.raises(UserError, match="cannot decide on 'val_bpc'; it decides on val_loss"):
        LanguageModelling({"decide_on": "val_bpc"})
    with pytest.raises(UserError, match="did you mean 'val_bleu'"):
        Translation({"decide_on": "val_blue"})
    with pytest.raises(UserError, match="options: .*decide_on"):
        Regression({"decide_onn": "val_mse"})


def test_a_plugin_task_without_decisions_decides_on_its_primary_metric() -> None:
    class Plain(Task):
        primary_metric = "acc"
        higher_is_better = True
        margin, noise_sd = 0.01, 0.005

    assert Plain.decidable() == {"acc": Decision(True, 0.01, 0.005)}
    assert Plain({"decide_on": "acc"}).primary_metric == "acc"
    with pytest.raises(ValueError, match="primary_metric 'acc' is not one of its decisions"):
        register_task("decide_on_bad_plugin")(type("Bad", (Task,), {"primary_metric": "acc",
                                                                   "decisions": {"f1": Decision(True, 0.1, 0.1)}}))
    assert "decide_on_bad_plugin" not in TASKS.names()


def test_plan_decide_on_reaches_the_cells_and_changes_only_their_ids() -> None:
    default = load_plan(dict(PLAN))
    bleu = load_plan({**PLAN, "decide_on": {"mt": "val_bleu"}})
    for plan, metric in ((default, "val_loss"), (bleu, "val_bleu")):
        mt_cells = [c for c in plan.cells if c.task == "mt"]
        assert mt_cells and all(c.task_config["decide_on"] == metric for c in mt_cells)
        task = TASKS.get("mt")(mt_cells[0].task_config)   # what the cell builds when it runs
        assert task.primary_metric == metric
    ids = {c.label: c.cell_id for c in default.cells}
    for c in bleu.cells:
        assert (ids[c.label] == c.cell_id) == (c.task == "regression"), c.label
    same = load_plan({**PLAN, "decide_on": {"regression": "val_mse"}})   # the default, said out loud
    assert [c.cell_id for c in same.cells] == [c.cell_id for c in default.cells]
    spelled = load_plan({**PLAN, "task_config": {"mt": {"decide_on": "val_bleu"}}})
    assert [c.cell_id for c in spelled.cells] == [c.cell_id for c in bleu.cells]


@pytest.mark.parametrize(("patch", "words"), [
    ({"decide_on": {"nt": "val_loss"}}, ["plan.decide_on.nt", "not a task of this plan", "regression, mt"]),
    ({"decide_on": {"mt": "val_blue"}}, ["plan.decide_on.mt", "cannot decide on 'val_blue'", "val_loss or val_bleu"]),
    ({"decide_on": {"regression": "val_loss"}}, ["plan.decide_on.regression", "decides on val_mse"]),
    ({"decide_on": ["mt"]}, ["plan.decide_on", "mapping"]),
    ({"decide_on": {"mt": "val_bleu"}, "task_config": {"mt": {"decide_on": "val_loss"}}},
     ["plan.decide_on.mt", "plan.task_config.mt.decide_on"]),
    ({"task_config": {"mt": {"decide_on": 3}}}, ["plan.task_config.mt", "cannot decide on 3"]),
])
def test_a_bad_decide_on_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                patch: dict[str, Any], words: list[str]) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({**PLAN, **patch}))
    code = cli.main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    assert not (tmp_path / "runs").exists()
