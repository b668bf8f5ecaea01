"""The statistics each task declares for verdicts: margin, noise, and a trivial score to beat.

A verdict on a task is only evidence when the baseline has learned that task (clearly better
than a trivial system scored on the same held-out data) and when the default budget can tell a
model that cheats from one that does not. The slow test plants a cheat (``cheat_peek_ahead``,
``tests/plugins/cheat_plugin.py``: causal attention that also sees the next token) and trains
it through the real cell path at the lm task's default budget.

Data tests use the pinned packages fetched once into ``$MODTRANSFER_CACHE`` (or
``<repo>/.cache/modtransfer``), as ``tests/test_tasks.py`` does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from modtransfer.core.errors import UserError
from modtransfer.core.task import TASKS, Task
from modtransfer.tasks.lm import LanguageModelling, count_model_scores
from modtransfer.tasks.mt import BLEU_SETTINGS, Translation
from modtransfer.tasks.regression import Regression

GATE_KEYS = {"margin", "noise_sd", "trivial", "trivial_name", "metric", "higher_is_better"}
PLUGIN = Path(__file__).parent / "plugins" / "cheat_plugin.py"


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    env = os.environ.get("MODTRANSFER_CACHE")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".cache" / "modtransfer"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prepared(task: Task) -> Task:
    try:
        task.prepare()
    except UserError as exc:  # data not fetchable here: say so rather than pass silently
        pytest.skip(f"{task.name} data unavailable: {exc}")
    return task


@pytest.fixture(scope="module")
def lm(cache_dir: Path) -> LanguageModelling:
    task = _prepared(LanguageModelling(cache_dir=cache_dir))
    assert isinstance(task, LanguageModelling)
    return task


@pytest.fixture(scope="module")
def mt(cache_dir: Path) -> Translation:
    task = _prepared(Translation(cache_dir=cache_dir))
    assert isinstance(task, Translation)
    return task


@pytest.mark.parametrize("name", ["regression", "lm", "mt"])
def test_builtin_tasks_declare_positive_statistics(name: str):
    cls = TASKS.get(name)
    assert cls.margin > 0 and math.isfinite(cls.margin)
    assert cls.noise_sd > 0 and math.isfinite(cls.noise_sd)
    assert cls.trivial_name


def test_base_task_has_no_trivial_score():
    with pytest.raises(NotImplementedError, match="trivial_score"):
        Task().trivial_score()


def test_regression_trivial_is_the_target_variance():
    task = Regression()
    # Var((a + 1)^2 + b) = 6 + 1 for a, b ~ N(0, 1); 64,000 held-out values: SE about 0.05
    assert task.trivial_score() == pytest.approx(7.0, abs=0.25)
    info = task.gate_info()
    assert set(info) == GATE_KEYS | {"plateau_fraction"}   # regression declares its predict-the-mean plateau
    assert info["metric"] == "val_mse" and info["higher_is_better"] is False and info["plateau_fraction"] == 0.9
    assert info["trivial"] == task.trivial_score()


def test_lm_bigram_beats_unigram_beats_uniform(lm: LanguageModelling):
    scores = lm.trivial_scores()
    assert set(scores) == {"unigram", "bigram"}
    assert 0 < scores["bigram"] < scores["unigram"] < math.log(lm.vocab_size)
    assert lm.trivial_score() == scores["bigram"]
    info = lm.gate_info()
    assert set(info) == GATE_KEYS and info["trivial"] == scores["bigram"]
    assert info["metric"] == "val_loss" and info["higher_is_better"] is False
    # the trivial score is far above the gate margin: a baseline at bigram level is not "close"
    assert info["trivial"] - 10 * info["margin"] > 0


def test_count_models_on_a_known_stream():
    import torch

    # "abab...": after a always b, after b always a; unsmoothed the bigram is certain
    train = torch.tensor([0, 1] * 50)
    prev, target = torch.tensor([0, 1]), torch.tensor([1, 0])
    scores = count_model_scores(train, prev, target, vocab=3, k=1e-9)
    assert scores["bigram"] == pytest.approx(0.0, abs=1e-6)
    assert scores["unigram"] == pytest.approx(math.log(2), abs=1e-6)


def test_mt_copy_bleu_matches_sacrebleu(mt: Translation):
    from sacrebleu.metrics import BLEU

    scores = mt.trivial_scores()
    assert set(scores) == {"copy", "frequent"}
    bleu_task = Translation({"decide_on": "val_bleu"}, mt.cache_dir)
    assert bleu_task.trivial_score() == max(scores.values())
    # the copy system recomputed here: the sources of the BLEU sentences of the default budget
    b = mt.default_budget
    rows = mt._bleu_rows(mt.val_batches(0, b.batch_size, b.eval_batches)).tolist()
    split, tok = mt.split("val"), mt.tokenizer()
    assert split.refs is not None and len(rows) == mt.config["bleu_sentences"]
    sources = [tok.decode(split.src[i, : int(split.src_len[i]) - 1].tolist(), skip_special_tokens=True).strip()
               for i in rows]
    assert all(sources)
    direct = BLEU(**BLEU_SETTINGS).corpus_score(sources, [[split.refs[i] for i in rows]]).score
    assert scores["copy"] == pytest.approx(direct, abs=1e-9)
    assert all(0 <= s < 100 for s in scores.values())
    info = bleu_task.gate_info()
    assert set(info) == GATE_KEYS and info["metric"] == "val_bleu" and info["higher_is_better"] is True
    assert info["margin"] == 0.5 and info["trivial"] == max(scores.values())


@pytest.mark.slow
def test_lm_default_budget_exposes_a_planted_cheat(lm: LanguageModelling, cache_dir: Path, tmp_path: Path,
                                                  temporary_plugin):
    """Baseline and cheat, one seed, default budget, tiny size, the real cell path (about 70 s on an idle core)."""
    import torch

    from modtransfer.run.cell import run_cell
    from modtransfer.run.plan import load_plan

    assert temporary_plugin(PLUGIN) is not None  # unregistered again after the test
    plan = load_plan({"name": "cheat", "size": "tiny", "tasks": ["lm"], "variants": ["cheat_peek_ahead"],
                      "seeds": [0], "wandb": {"mode": "disabled"}})
    assert all(cell.budget == lm.default_budget for cell in plan.cells)
    value = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cell in plan.cells:
            row = run_cell(cell, tmp_path / cell.variant, wandb_cfg={"mode": "disabled"}, cache_dir=cache_dir)
            assert row["status"] == "done", row["error"]
            value[cell.variant] = row["primary_value"]
    finally:
        torch.set_num_threads(threads)
    trivial, margin = lm.trivial_score(), lm.margin
    assert value["baseline"] < trivial - 10 * margin, value   # the baseline learned more than bigrams
    assert value["cheat_peek_ahead"] < value["baseline"] - 10 * margin, value
