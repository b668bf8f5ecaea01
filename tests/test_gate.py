"""The gate before ``run``: plugin variants that break the contract are stopped, built-ins skipped.

Uses the planted bad plugins of ``tests/plugins``: a FFN that averages over positions (leaks
the future and padding) and a mixture of experts whose capacity, filled batch-major, leaks
only in training mode; plus the honest QK-norm example, which must pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import modtransfer.check.gate as gate_module
from modtransfer.check.gate import CACHE_FILE, gate

Loader = Callable[[str | Path], str | None]


@pytest.fixture
def plugins(temporary_plugin: Loader, plugin_dir: Path) -> Path:
    for name in ("leaky_plugin.py", "moe_leak_plugin.py", "qk_cosine.py", "cheat_plugin.py"):
        assert temporary_plugin(plugin_dir / name) is not None, name
    return plugin_dir


def test_gate_reports_leaky_plugins_and_skips_builtins(plugins: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    real = gate_module.run_contract

    def spy(expr: str, tasks: list[str], **kw: object) -> list:
        checked.append(expr)
        return real(expr, tasks, **kw)

    monkeypatch.setattr(gate_module, "run_contract", spy)
    exprs = ["baseline", "swiglu+rmsnorm", "leaky_ffn", "rmsnorm+moe_batch_major", "qk_cosine", "cheat_peek_ahead"]
    lines = gate(exprs, ["lm", "mt"], tmp_path)
    assert set(checked) == {"leaky_ffn", "rmsnorm+moe_batch_major", "qk_cosine", "cheat_peek_ahead"}
    assert not any("qk_cosine" in line for line in lines)
    leaky = [line for line in lines if "'leaky_ffn'" in line]
    assert any("task 'lm', check 'causality'" in line and "sees the future" in line for line in leaky)
    assert any("task 'mt', check 'padding'" in line for line in leaky)
    moe = [line for line in lines if "'rmsnorm+moe_batch_major'" in line]
    assert any("check 'causality'" in line and "training mode" in line for line in moe), moe
    assert any("'cheat_peek_ahead'" in line and "check 'causality'" in line for line in lines)
    for line in lines:
        assert "details: modtransfer check " in line and " --tasks " in line and "--plugin " in line
    assert "modtransfer check leaky_ffn --tasks lm --plugin " in "\n".join(leaky)
    assert (tmp_path / CACHE_FILE).is_file()


def test_gate_cache_hit_pays_nothing(plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = gate(["leaky_ffn", "qk_cosine"], ["lm"], tmp_path)
    assert first and all("'leaky_ffn'" in line for line in first)

    def refuse(*args: object, **kw: object) -> list:
        raise AssertionError("the contract ran again on unchanged code")

    monkeypatch.setattr(gate_module, "run_contract", refuse)
    assert gate(["leaky_ffn", "qk_cosine"], ["lm"], tmp_path) == first
    with pytest.raises(AssertionError, match="ran again"):  # a task not checked yet is not in the cache
        gate(["qk_cosine"], ["regression"], tmp_path)


def test_gate_checks_again_when_plugin_code_changes(temporary_plugin: Loader, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = tmp_path / "mixing_plugin.py"
    source = ('"""A FFN mixing in MIX x the mean over positions."""\n'
              "from torch import nn\n\n"
              "from modtransfer import register_component, register_variant\n\n"
              "MIX = {mix}\n\n\n"
              "@register_component('ffn', 'gate_mixing')\n"
              "class Mixing(nn.Module):\n"
              "    def __init__(self, spec, activation, layer_index=0):\n"
              "        super().__init__()\n"
              "        self.w = nn.Linear(spec.d_model, spec.d_model)\n\n"
              "    def forward(self, x):\n"
              "        return self.w(x + MIX * x.mean(dim=1, keepdim=True))\n\n\n"
              "@register_variant('gate_mixing', slot='ffn')\n"
              "def gate_mixing(spec):\n"
              "    return spec.replace(ffn='gate_mixing')\n")
    plugin.write_text(source.format(mix=1.0))
    assert temporary_plugin(plugin) is not None
    cache = tmp_path / "cache"
    assert any("check 'causality'" in line for line in gate(["gate_mixing"], ["lm"], cache))
    runs: list[str] = []
    monkeypatch.setattr(gate_module, "run_contract", lambda expr, tasks, **kw: runs.append(expr) or [])
    plugin.write_text(source.format(mix=0.0))  # the fix (not re-imported: the digest reads the file)
    assert gate(["gate_mixing"], ["lm"], cache) == [] and runs == ["gate_mixing"]


def test_gate_on_builtins_only_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate_module, "run_contract", lambda *a, **kw: pytest.fail("built-ins are not gated"))
    assert gate(["baseline", "swiglu", "switch(capacity_factor=1.25)+rmsnorm"], ["lm", "mt"], tmp_path) == []
    assert not (tmp_path / CACHE_FILE).exists()
