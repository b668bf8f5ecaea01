"""Fair comparisons (issue 27): time to target, performance profiles, learning-rate curves, held-out task variants."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from modtransfer.builtins import load_builtins
from modtransfer.core.task import TASKS
from modtransfer.reports.lrcurves import LrCurve
from modtransfer.reports.survival import parents, survival
from modtransfer.reports.target import ArmTimes, TargetCondition, profile, ratio_to_baseline, reach_step

load_builtins()


# -- time to target -----------------------------------------------------------------------------
def test_reach_step_interpolates_between_evaluations():
    curve = [{"step": 0, "train_loss": 9.0}, {"step": 100, "val_loss": 5.0}, {"step": 200, "val_loss": 3.0},
             {"step": 300, "val_loss": 1.0}]
    assert reach_step(curve, "val_loss", 2.0, higher_is_better=False) == pytest.approx(250.0)
    assert reach_step(curve, "val_loss", 5.5, higher_is_better=False) == 100.0   # met at the first evaluation
    assert math.isinf(reach_step(curve, "val_loss", 0.5, higher_is_better=False))
    up = [{"step": 10, "bleu": 1.0}, {"step": 20, "bleu": 5.0}]
    assert reach_step(up, "bleu", 4.0, higher_is_better=True) == pytest.approx(17.5)
    assert math.isinf(reach_step(up, "bleu", 6.0, higher_is_better=True))


def test_ratio_to_baseline_is_paired_and_counts_misses():
    tc = TargetCondition("lm", "lm", "val_loss", False, 2.0, "task")
    tc.arms["baseline"] = ArmTimes({0: 100.0, 1: 200.0, 2: 100.0})
    tc.arms["fast"] = ArmTimes({0: 50.0, 1: 100.0, 2: math.inf})
    r = ratio_to_baseline(tc, "fast")
    assert (r.n_pairs, r.n_both, r.variant_reached, r.baseline_reached) == (3, 2, 2, 3)
    assert r.ratio == pytest.approx(0.5)
    assert tc.arms["fast"].median_steps() == 100.0
    tc.arms["slow"] = ArmTimes({0: math.inf, 1: math.inf, 2: 10.0})
    assert math.isinf(tc.arms["slow"].median_steps())   # more than half missed


def test_performance_profile_scores():
    times = {"t1": {"a": 10.0, "b": 20.0}, "t2": {"a": 10.0, "b": math.inf}}
    prof = profile(times)
    assert prof["arms"]["a"]["score"] == pytest.approx(1.0)
    # b: within 2x on t1 (contributes (4 - 2) / 3 of one task), missed t2: (2/3) / 2 tasks
    assert prof["arms"]["b"]["score"] == pytest.approx(1 / 3)
    taus = prof["taus"]
    rho_b = prof["arms"]["b"]["rho"]
    assert rho_b[0] == 0.0 and rho_b[-1] == 0.5 and rho_b[taus.index(2.0)] == 0.5


# -- learning-rate curves -----------------------------------------------------------------------
def test_lr_curve_range_that_trains():
    c = LrCurve("lm", "baseline", "val_loss", False)
    for lr, v in {1e-4: 3.0, 3e-4: 2.05, 1e-3: 2.0, 3e-3: 2.01, 1e-2: 2.5}.items():
        c.values[lr] = [v, v + 0.001]
    best_lr, _ = c.best()
    assert best_lr == 1e-3
    lo, hi, width = c.trains(margin=0.06)
    assert (lo, hi) == (3e-4, 3e-3)
    assert width == pytest.approx(math.log10(10) + math.log10(10 ** 0.5), rel=0.02)
    c.failed[3e-3] = 1   # a diverged seed there: that lr does not train
    assert c.trains(margin=0.06)[1] == 1e-3


# -- held-out task variants ---------------------------------------------------------------------
def test_every_builtin_task_declares_two_held_out_variants():
    held = parents()
    for task in ("lm", "mt", "regression"):
        children = [c for c, p in held.items() if p == task]
        assert len(children) >= 2, task
        for child in children:
            cls = TASKS.get(child)
            assert issubclass(cls, TASKS.get(task)) and cls.topology == TASKS.get(task).topology
            assert cls.margin > 0 and cls.noise_sd > 0


def test_regression_product_batches_have_their_own_target():
    task = TASKS.get("regression_product")()
    batch = next(task.train_batches(0, 8))
    a, b = batch["x"][..., :50], batch["x"][..., 50:]
    assert torch.allclose(batch["y"], a * b + a)
    assert task.trivial_score() == pytest.approx(2.0, abs=0.1)
    assert TASKS.get("regression")().trivial_score() == pytest.approx(7.0, abs=0.3)  # no shared cache entry
    long = TASKS.get("regression_long")()
    assert next(long.train_batches(0, 2))["x"].shape == (2, 40, 24)


def test_mt_fr_en_swaps_source_and_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = Path(__file__).parent / "data" / "tiny_mt.jsonl"
    cfg = {"source": "hf", "hf_path": "json", "hf_name": "", "hf_data_files": str(data), "src_lang": "en",
           "tgt_lang": "fr", "vocab_size": 300, "max_len": 32}
    fwd = TASKS.get("mt")(cfg, cache_dir=tmp_path)._pairs()
    rev = TASKS.get("mt_fr_en")(cfg, cache_dir=tmp_path)._pairs()
    assert rev["val"] == [(fr, en) for en, fr in fwd["val"]]
    assert TASKS.get("mt_fr_en")(cfg, cache_dir=tmp_path).cache_file != TASKS.get("mt")(cfg, cache_dir=tmp_path).cache_file


def test_survival_outcomes():
    assert survival("better", "better") == "survives"
    assert survival("better", "worse") == "reverses"
    assert survival("better", "no change") == "lost"
    assert survival("better", "unclear") == "untested"


def test_survival_is_read_setting_by_setting():
    from types import SimpleNamespace

    from modtransfer.reports.survival import survival_rows

    def comp(variant, task, hp, call):
        return SimpleNamespace(variant=variant, call=call,
                               cond=SimpleNamespace(task=task, hparams_json=hp, label=f"{task} {hp}"))
    a = SimpleNamespace(comps=[comp("v", "regression", '{"lr": 1}', "better"), comp("v", "regression", '{"lr": 2}', "worse"),
                               comp("v", "regression_product", '{"lr": 1}', "better"),
                               comp("v", "regression_product", '{"lr": 2}', "no change"),
                               comp("v", "lm", "{}", "better")])
    rows = survival_rows(a, {"regression_product": "regression", "lm_bpe": "lm"})
    assert [(r["task"], r["survival"]) for r in rows] == [('regression {"lr": 1}', "survives"),
                                                         ('regression {"lr": 2}', "lost")]


def test_held_out_variants_describe_their_own_data():
    from modtransfer.reports.survival import parents

    for child, parent in parents().items():
        c, p = TASKS.get(child), TASKS.get(parent)
        assert c.card is not None and c.card != p.card, child   # a report's Tasks section must not show the parent's
        assert child in c.description or "held-out variant of " + parent in c.description
    assert "Bible" in TASKS.get("lm_bible").credit and "Shakespeare" not in TASKS.get("lm_bible").card.data
    assert "a * b + a" in TASKS.get("regression_product").card.data


def test_time_to_target_in_seconds_follows_the_steps():
    arm = ArmTimes({0: 100.0, 1: 300.0, 2: math.inf}, {0: 2.0, 1: 6.0, 2: math.inf})
    assert arm.median_steps() == 300.0 and arm.median_seconds() == 6.0
