"""The contract suite over every registered variant and task, and tests that it catches bugs.

``test_variant_keeps_contract`` is parametrised at collection time (timm-style) over
``VARIANTS x TASKS``: built-in variants, new ``variants/*.py`` files and the example plugin
loaded in ``conftest.py`` are all picked up without editing this file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import modtransfer.tasks  # noqa: F401  (registers the built-in tasks)
from modtransfer import ModelSpec, register_component, register_variant
from modtransfer.builtins import load_builtins
from modtransfer.check.contract import (
    CHECKS,
    FALLBACK_VOCAB,
    CheckResult,
    format_results,
    run_contract,
)
from modtransfer.check.pair import GRAD_RETRY_BATCH
from modtransfer.core.errors import ConflictError, UserError
from modtransfer.core.plugins import PROBLEMS
from modtransfer.core.task import TASKS, Task, register_task
from modtransfer.core.variant import VARIANTS

load_builtins()
#: held-out task variants (tasks/heldout.py) build the models of their parents' topologies: every variant is
#: checked on the parents, and the held-out tasks with the baseline and a composed variant (below)
HELD_OUT = [t for t in TASKS.names() if getattr(TASKS.get(t), "held_out_of", "")]
PAIRS = [pytest.param(v, t, id=f"{v}-{t}") for v in VARIANTS.names() for t in TASKS.names() if t not in HELD_OUT]
HELD_OUT_PAIRS = [pytest.param(v, t, id=f"{v}-{t}") for v in ("baseline", "swiglu+rmsnorm") for t in HELD_OUT]

Loader = Callable[[str | Path], str | None]


def _by_check(results: list[CheckResult], task: str) -> dict[str, CheckResult]:
    return {r.check: r for r in results if r.task == task}


def _failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "failed"]


# -- every variant x every task -----------------------------------------------------------------
@pytest.mark.parametrize(("variant", "task"), PAIRS + HELD_OUT_PAIRS)
def test_variant_keeps_contract(variant: str, task: str, empty_cache: Path) -> None:
    results = run_contract(variant, [task], cache_dir=empty_cache)
    if len(results) == 1 and results[0].status == "skipped":
        pytest.skip(results[0].detail)
    failed = _failed(results)
    assert not failed, f"{variant} on {task}:\n" + "\n".join(f"  {r.check}: {r.detail}" for r in failed)
    assert [r.check for r in results] == list(CHECKS)


def test_parametrisation_includes_plugin_and_builtins() -> None:
    ids = {p.id for p in PAIRS}
    assert {"squared_relu-lm", "baseline-mt", "swiglu-regression"} <= ids
    assert {"lm", "mt", "regression"} <= set(TASKS.names())


# -- the suite catches broken variants ----------------------------------------------------------
def test_leaky_ffn_fails_causality_and_padding(temporary_plugin: Loader, plugin_dir: Path, empty_cache: Path) -> None:
    assert temporary_plugin(plugin_dir / "leaky_plugin.py") is not None
    results = run_contract("leaky_ffn", ["lm", "mt", "regression"], cache_dir=empty_cache)
    lm, mt, reg = (_by_check(results, t) for t in ("lm", "mt", "regression"))
    assert lm["causality"].status == "failed" and "sees the future" in lm["causality"].detail
    assert mt["causality"].status == "failed"
    assert mt["padding"].status == "failed" and "padded" in mt["padding"].detail
    # an encoder without padding may mix positions: nothing to report there
    assert not _failed(list(reg.values()))
    assert lm["gradients"].status == "passed" and lm["state_dict"].status == "passed"


def test_unused_parameter_fails_gradients(temporary_plugin: Loader, plugin_dir: Path, empty_cache: Path) -> None:
    assert temporary_plugin(plugin_dir / "dead_param_plugin.py") is not None
    results = run_contract("dead_gate_ffn", ["lm", "regression"], cache_dir=empty_cache)
    for task in ("lm", "regression"):
        grads = _by_check(results, task)["gradients"]
        assert grads.status == "failed", grads
        assert ".ffn.sublayer.gate" in grads.detail and "no gradient" in grads.detail
    assert {r.check for r in _failed(results)} == {"gradients"}


class _Experts(nn.ModuleList):
    conditional_grad = True


class _RoutedFFN(nn.Module):
    """Two experts; the second is used only by large batches, or never."""

    experts_cls: type[nn.ModuleList] = nn.ModuleList
    second_used_from: int | None = None

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.experts = self.experts_cls([nn.Linear(spec.d_model, spec.d_model) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        out = self.experts[0](x)
        if self.second_used_from is not None and x.shape[0] >= self.second_used_from:
            out = out + self.experts[1](x)
        return out


class _NeverRoutedUndeclared(_RoutedFFN):
    pass


class _NeverRoutedDeclared(_RoutedFFN):
    experts_cls = _Experts


class _RoutedOnLargeBatches(_RoutedFFN):
    second_used_from = GRAD_RETRY_BATCH


def _ffn_variant(name: str, ffn: str) -> None:
    def patch(spec: ModelSpec) -> ModelSpec:
        return spec.replace(ffn=ffn)

    patch.__name__ = patch.__qualname__ = name
    register_variant(name, slot="ffn")(patch)


@pytest.mark.parametrize(
    ("cls", "status", "words"),
    [
        (_NeverRoutedUndeclared, "failed", "experts.1.weight"),
        (_NeverRoutedDeclared, "passed", "conditionally used"),
        (_RoutedOnLargeBatches, "passed", "batches needed"),
    ],
)
def test_conditionally_used_parameters(temporary_plugin: Loader, empty_cache: Path, cls: type, status: str,
                                       words: str) -> None:
    register_component("ffn", "contract_routed")(cls)
    _ffn_variant("contract_routed", "contract_routed")
    grads = _by_check(run_contract("contract_routed", ["lm"], cache_dir=empty_cache), "lm")["gradients"]
    assert grads.status == status, grads
    assert words in grads.detail


def _noisy_relu(x: Tensor) -> Tensor:
    return F.relu(x) + random.random() * 1e-2


class _RandomMixFFN(nn.Module):
    """Mixes features with a random matrix kept in a non-persistent buffer (lost by state_dict)."""

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.w = nn.Linear(spec.d_model, spec.d_model)
        self.register_buffer("mix", torch.randn(spec.d_model, spec.d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w(x @ self.mix)


class _RawLogits(nn.Module):
    """An output layer whose 'log-probabilities' are unnormalised logits."""

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, spec.vocab_size, bias=False)

    def log_probs(self, h: Tensor, weight: Tensor | None) -> Tensor:
        return self.proj(h)

    def token_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        return F.cross_entropy(self.proj(h).flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


def test_nondeterministic_variant_fails_determinism(temporary_plugin: Loader, empty_cache: Path) -> None:
    register_component("activation", "contract_noisy")(_noisy_relu)
    register_variant("contract_noisy", slot="activation")(lambda spec: spec.replace(activation="contract_noisy"))
    checks = _by_check(run_contract("contract_noisy", ["regression"], cache_dir=empty_cache), "regression")
    assert checks["determinism"].status == "failed" and "same seed gave losses" in checks["determinism"].detail


def test_unsaved_state_fails_state_dict_round_trip(temporary_plugin: Loader, empty_cache: Path) -> None:
    register_component("ffn", "contract_random_mix")(_RandomMixFFN)
    _ffn_variant("contract_random_mix", "contract_random_mix")
    checks = _by_check(run_contract("contract_random_mix", ["lm"], cache_dir=empty_cache), "lm")
    assert checks["state_dict"].status == "failed" and "round trip" in checks["state_dict"].detail
    assert checks["determinism"].status == "passed"  # same seed, same buffer


def test_unnormalised_output_fails_forward(temporary_plugin: Loader, empty_cache: Path) -> None:
    register_component("output", "contract_raw")(_RawLogits)
    register_variant("contract_raw", slot="output", requires=("vocab",))(lambda spec: spec.replace(output="contract_raw"))
    results = run_contract("contract_raw", ["lm", "regression"], cache_dir=empty_cache)
    assert _by_check(results, "lm")["forward"].status == "failed"
    assert "normalise" in _by_check(results, "lm")["forward"].detail
    skipped = _by_check(results, "regression")["applicable"]
    assert skipped.status == "skipped" and "vocab" in skipped.detail


def _wide_ffn(spec: ModelSpec) -> ModelSpec:
    return spec.replace(d_ff=spec.d_ff * 2)


def _gelu_same_flops(spec: ModelSpec) -> ModelSpec:
    return spec.replace(activation="gelu")


def test_matching_is_checked_at_every_size(temporary_plugin: Loader, empty_cache: Path) -> None:
    register_variant("contract_wide_params", slot="ffn", matches="params")(_wide_ffn)
    register_variant("contract_wide_flops", slot="ffn", matches="flops")(_wide_ffn)
    register_variant("contract_gelu_flops", slot="activation", matches="flops")(_gelu_same_flops)
    for name, kind in (("contract_wide_params", "parameters"), ("contract_wide_flops", "FLOPs per token")):
        match = _by_check(run_contract(name, ["mt"], cache_dir=empty_cache), "mt")["matching"]
        assert match.status == "failed" and kind in match.detail and "at size" in match.detail, match
    ok = _by_check(run_contract("contract_gelu_flops", ["lm"], cache_dir=empty_cache), "lm")["matching"]
    assert ok.status == "passed" and "flops within 0.00%" in ok.detail and "tiny" in ok.detail
    plain = _by_check(run_contract("gelu", ["lm"], cache_dir=empty_cache), "lm")["matching"]
    assert plain.status == "skipped"


class _CrashingNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        raise RuntimeError("norm cannot be built")


def test_variant_that_cannot_resolve_or_build_is_a_failure(temporary_plugin: Loader, empty_cache: Path) -> None:
    register_variant("contract_unknown_norm", slot="norm")(lambda spec: spec.replace(norm="no_such_norm"))
    register_component("norm", "contract_crash")(_CrashingNorm)
    register_variant("contract_crash", slot="norm")(lambda spec: spec.replace(norm="contract_crash"))
    bad = run_contract("contract_unknown_norm", ["lm"], cache_dir=empty_cache)
    assert [(r.check, r.status) for r in bad] == [("resolve", "failed")] and "no_such_norm" in bad[0].detail
    crash = run_contract("contract_crash", ["lm"], cache_dir=empty_cache)
    assert [(r.check, r.status) for r in crash] == [("build", "failed")]
    assert "norm cannot be built" in crash[0].detail
    assert format_results(crash).splitlines()[-1] == "0 passed, 1 failed, 0 skipped"


# -- applicability, errors, data sources --------------------------------------------------------
def test_inapplicable_pair_is_one_skipped_result(empty_cache: Path) -> None:
    results = run_contract("untied_embedding", ["regression", "lm"], cache_dir=empty_cache)
    reg = [r for r in results if r.task == "regression"]
    assert len(reg) == 1 and reg[0].status == "skipped" and "needs a task with vocab" in reg[0].detail
    assert len([r for r in results if r.task == "lm"]) == len(CHECKS)


def test_user_errors_are_raised_not_reported(empty_cache: Path) -> None:
    with pytest.raises(UserError, match="unknown variant"):
        run_contract("no_such_variant", cache_dir=empty_cache)
    with pytest.raises(UserError, match="unknown task"):
        run_contract("baseline", ["no_such_task"], cache_dir=empty_cache)
    with pytest.raises(ConflictError, match="both change"):
        run_contract("gelu+swish", ["lm"], cache_dir=empty_cache)


def test_broken_plugin_is_reported_and_skipped(temporary_plugin: Loader, plugin_dir: Path) -> None:
    assert temporary_plugin(plugin_dir / "broken_plugin.py") is None
    assert any("broken_plugin.py" in p.name and "on purpose" in p.error for p in PROBLEMS)


class _FakeLM(Task):
    """A decoder task whose 'data' exists when a marker file is in the cache."""

    topology = "decoder"
    has_vocab = True
    losses = 0

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / "fake-lm.txt"

    def prepare(self) -> None:
        if not self.cache_file.exists():
            raise UserError("fake-lm: would download")

    def configure_spec(self, spec: Any) -> Any:
        self.prepare()
        return spec.replace(vocab_size=11, max_len=16)

    def train_batches(self, seed: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            w = torch.randint(0, 11, (batch_size, 9), generator=gen)
            yield {"x": w[:, :-1], "y": w[:, 1:]}

    def loss(self, model: Any, batch: dict[str, Tensor]) -> Tensor:
        type(self).losses += 1
        return model.token_nll(model.decode(batch["x"]), batch["y"]).mean()


def test_real_batches_when_data_is_cached_synthetic_otherwise(temporary_plugin: Loader, tmp_path: Path) -> None:
    register_task("contract_fake_lm")(_FakeLM)
    _FakeLM.losses = 0
    synthetic = _by_check(run_contract("baseline", ["contract_fake_lm"], cache_dir=tmp_path), "contract_fake_lm")
    assert not _failed(list(synthetic.values()))
    assert "synthetic batch" in synthetic["loss"].detail and f"vocab_size={FALLBACK_VOCAB}" in synthetic["forward"].detail
    assert _FakeLM.losses == 0

    (tmp_path / "fake-lm.txt").write_text("ready")
    real = _by_check(run_contract("baseline", ["contract_fake_lm"], cache_dir=tmp_path), "contract_fake_lm")
    assert not _failed(list(real.values()))
    assert "real 'contract_fake_lm' batch" in real["loss"].detail
    assert "(4, 12, 11)" in real["forward"].detail  # the task's own vocabulary
    assert _FakeLM.losses >= 2  # training loss and the determinism re-run

    _FakeLM.losses = 0
    off = _by_check(run_contract("baseline", ["contract_fake_lm"], cache_dir=tmp_path, use_data=False),
                    "contract_fake_lm")
    assert "synthetic" in off["loss"].detail and _FakeLM.losses == 0


# -- the table ----------------------------------------------------------------------------------
def test_format_results_table_and_summary() -> None:
    results = [
        CheckResult("swiglu", "lm", "forward", "passed", "ok"),
        CheckResult("swiglu", "lm", "causality", "failed", "position 3\nchanged"),
        CheckResult("swiglu", "regression", "applicable", "skipped", "needs vocab"),
        CheckResult("swiglu", "mt", "padding", "passed", ""),
    ]
    text = format_results(results)
    lines = text.splitlines()
    assert lines[-1] == "2 passed, 1 failed, 1 skipped"
    assert lines[0].split() == ["variant", "task", "check", "status", "detail"]
    failed_line = next(line for line in lines if "causality" in line)
    assert "FAILED" in failed_line and "position 3 changed" in failed_line
    assert len(lines) == 2 + len(results) + 1
    assert format_results([]).splitlines()[-1] == "0 passed, 0 failed, 0 skipped"
