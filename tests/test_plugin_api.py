"""The plugin API: base classes, composable options, error locations, code digests, lazy registries.

Each test states one promise the README's "Writing a plugin" section makes, using the plugin
files of ``tests/plugins`` the way an outside author would (public decorators, ``--plugin``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from modtransfer import CAPABILITIES, ModelSpec, register_component, register_variant
from modtransfer.check.contract import CHECKS, CheckResult, run_contract
from modtransfer.check.plugin_errors import plugin_frame
from modtransfer.core.digest import code_digest
from modtransfer.core.errors import ConflictError
from modtransfer.core.model import build
from modtransfer.core.protocols import SLOT_PROTOCOLS
from modtransfer.core.spec import SLOTS
from modtransfer.core.variant import resolve

Loader = Callable[[str | Path], str | None]
TINY = ModelSpec(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=32, vocab_size=50)


def _by_check(results: list[CheckResult], task: str) -> dict[str, CheckResult]:
    return {r.check: r for r in results if r.task == task}


def _failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "failed"]


# -- base classes -------------------------------------------------------------------------------
def test_qk_cosine_example_is_short_and_passes_check(temporary_plugin: Loader, plugin_dir: Path,
                                                   empty_cache: Path) -> None:
    path = plugin_dir / "qk_cosine.py"
    assert len(path.read_text().splitlines()) < 25
    assert temporary_plugin(path) is not None
    results = run_contract("qk_cosine", ["lm", "mt", "regression"], cache_dir=empty_cache)
    assert not _failed(results), _failed(results)
    assert _by_check(results, "mt")["padding"].status == "passed"
    assert "training mode" in _by_check(results, "lm")["causality"].detail


def test_attention_base_subclass_matches_fused_path_with_default_scores() -> None:
    """Overriding ``scores`` with the default formula reproduces the fused baseline exactly."""
    from modtransfer import AttentionBase

    class SameScores(AttentionBase):
        def scores(self, q: Tensor, k: Tensor) -> Tensor:
            return (q @ k.transpose(-1, -2)) * self.scale

    torch.manual_seed(0)
    fused = AttentionBase(TINY, causal=True)
    mine = SameScores(TINY, causal=True)
    mine.load_state_dict(fused.state_dict())
    x = torch.randn(3, 7, TINY.d_model)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    for kw in ({}, {"pad_mask": pad}, {"bias": torch.randn(TINY.n_heads, 7, 7)}):
        torch.testing.assert_close(mine(x, **kw), fused(x, **kw), rtol=1e-5, atol=1e-6)
    assert set(mine.branch_weights()) == {"score", "input", "output"} and mine.output_layers() == [mine.out]


def test_residual_and_norm_bases(temporary_plugin: Loader, plugin_dir: Path, empty_cache: Path) -> None:
    from modtransfer import NormBase, ResidualBase

    assert temporary_plugin(plugin_dir / "layerscale.py") is not None
    spec = resolve("layerscale(init=0.5)", TINY).spec
    model = build(spec, "decoder")
    scales = [m.scale for m in model.modules() if isinstance(m, ResidualBase) and hasattr(m, "scale")]
    assert scales and all(bool((s == 0.5).all()) for s in scales)  # reset_special ran after the init scheme

    class CentredNorm(NormBase):
        use_bias = True

        def normalise(self, x: Tensor) -> Tensor:
            return x - x.mean(dim=-1, keepdim=True)

    norm = CentredNorm(8, 1e-5)
    y = norm(torch.randn(2, 3, 8))
    assert torch.allclose(y.mean(-1), torch.zeros(2, 3), atol=1e-6)
    assert {n for n, _ in norm.named_parameters()} == {"weight", "bias"}
    results = run_contract("layerscale", ["lm"], cache_dir=empty_cache)
    assert not _failed(results), _failed(results)


def test_slot_protocols_cover_every_slot_and_are_documented() -> None:
    assert set(SLOT_PROTOCOLS) == set(SLOTS)
    assert all((p.__doc__ or "").strip() for p in SLOT_PROTOCOLS.values())
    import modtransfer.core.model

    doc = modtransfer.core.model.__doc__ or ""
    assert all(f"``{cap}``" in doc for cap in CAPABILITIES)
    from modtransfer.variants.activations import gelu_tanh  # a built-in function component

    assert isinstance(gelu_tanh, SLOT_PROTOCOLS["activation"])


# -- options in ModelSpec.extra compose ---------------------------------------------------------
def test_extra_options_of_two_variants_compose(temporary_plugin: Loader, plugin_dir: Path) -> None:
    assert temporary_plugin(plugin_dir / "layerscale.py") is not None
    for expr in ("switch(capacity_factor=1.25)+layerscale", "layerscale+switch(capacity_factor=1.25)"):
        spec = resolve(expr, TINY).spec
        assert spec.option("capacity_factor") == 1.25 and spec.option("layerscale_init") == 0.1
        assert spec.ffn == "switch" and spec.residual == "layerscale"


def test_variant_rewriting_extra_keeps_the_other_variants_keys(temporary_plugin: Loader) -> None:
    register_variant("api_wholesale_extra", slot="norm")(lambda spec: spec.replace(extra={"api_key": 1}))
    spec = resolve("switch(capacity_factor=1.25)+api_wholesale_extra", TINY).spec
    assert dict(spec.extra) == {"capacity_factor": 1.25, "api_key": 1}


def test_same_extra_key_is_a_conflict_naming_both(temporary_plugin: Loader) -> None:
    register_variant("api_other_capacity", slot="ffn")(lambda spec: spec.with_options(capacity_factor=2.0))
    with pytest.raises(ConflictError, match=r"'switch\(capacity_factor=1.25\)' and 'api_other_capacity' both change "
                                            r"ModelSpec.extra\['capacity_factor'\]"):
        resolve("switch(capacity_factor=1.25)+api_other_capacity", TINY)


# -- errors point at the plugin -----------------------------------------------------------------
def test_error_in_a_plugin_component_names_slot_file_line_function(temporary_plugin: Loader, plugin_dir: Path,
                                                                 empty_cache: Path) -> None:
    assert temporary_plugin(plugin_dir / "raising_plugin.py") is not None
    path = (plugin_dir / "raising_plugin.py").resolve()
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "raise RuntimeError(MESSAGE)" in text)
    [result] = run_contract("raise_in_forward", ["lm"], cache_dir=empty_cache)
    assert result.check == "build" and result.status == "failed"
    assert result.detail.startswith(f"ffn 'raise_in_forward' (plugin {path}:{line} in forward): RuntimeError: ")


def test_error_in_a_plugin_variant_and_plugin_frame_helper(temporary_plugin: Loader, tmp_path: Path,
                                                           empty_cache: Path) -> None:
    plugin = tmp_path / "bad_variant_plugin.py"
    plugin.write_text(
        "from modtransfer import register_variant\n\n\n"
        "def _half(spec):\n"
        "    return spec.d_ff / 'two'\n\n\n"
        "@register_variant('api_bad_variant', slot='ffn')\n"
        "def bad(spec):\n"
        "    return spec.replace(d_ff=_half(spec))\n"
    )
    assert temporary_plugin(plugin) is not None
    [result] = run_contract("api_bad_variant", ["lm"], cache_dir=empty_cache)
    assert result.check == "resolve" and result.status == "failed"
    assert f"variant 'api_bad_variant' (plugin {plugin.resolve()}:5 in _half)" in result.detail
    assert plugin_frame(ValueError("no traceback")) is None
    try:
        torch.zeros(2) @ torch.zeros(3)  # a harness/library error, no plugin frame
    except RuntimeError as exc:
        assert plugin_frame(exc) is None


# -- stop at the first non-finite output --------------------------------------------------------
class _NaNFFN(nn.Module):
    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> None:
        super().__init__()
        self.w = nn.Linear(spec.d_model, spec.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w(x) * float("nan")


def test_non_finite_output_stops_the_checks(temporary_plugin: Loader, empty_cache: Path) -> None:
    register_component("ffn", "api_nan")(_NaNFFN)
    register_variant("api_nan", slot="ffn")(lambda spec: spec.replace(ffn="api_nan"))
    checks = _by_check(run_contract("api_nan", ["lm"], cache_dir=empty_cache), "lm")
    assert list(checks) == list(CHECKS)
    assert checks["forward"].status == "failed" and "not finite" in checks["forward"].detail
    later = [checks[c] for c in CHECKS[1:]]
    assert all(r.status == "skipped" and "non-finite" in r.detail for r in later), later


# -- meta device --------------------------------------------------------------------------------
def test_plugin_failing_on_meta_fails_check(temporary_plugin: Loader, plugin_dir: Path, empty_cache: Path) -> None:
    assert temporary_plugin(plugin_dir / "meta_fail_plugin.py") is not None
    checks = _by_check(run_contract("meta_fail", ["lm"], cache_dir=empty_cache), "lm")
    assert checks["forward"].status == "passed" and checks["loss"].status == "passed"
    assert checks["meta"].status == "failed"
    assert "ffn 'data_dependent' (plugin " in checks["meta"].detail and "meta" in checks["meta"].detail


# -- train mode ---------------------------------------------------------------------------------
def test_batch_major_capacity_leaks_only_in_training(temporary_plugin: Loader, plugin_dir: Path,
                                                     empty_cache: Path) -> None:
    assert temporary_plugin(plugin_dir / "moe_leak_plugin.py") is not None
    checks = _by_check(run_contract("moe_batch_major", ["lm"], cache_dir=empty_cache), "lm")
    assert checks["causality"].status == "failed"
    assert "training mode" in checks["causality"].detail and "sees the future" in checks["causality"].detail
    assert checks["forward"].status == "passed"


@pytest.mark.parametrize("variant", ["switch(capacity_factor=0.5)", "moe(capacity_factor=0.5)"])
@pytest.mark.parametrize("topology", ["decoder", "encoder_decoder"])
def test_moe_ignores_padding_in_training(variant: str, topology: str) -> None:
    spec = resolve(variant, TINY.replace(dropout=0.1)).spec
    torch.manual_seed(0)
    model = build(spec, topology).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, spec.vocab_size, (4, 12), generator=gen)
    pad = torch.arange(12)[None, :] >= torch.tensor([12, 9, 5, 3])[:, None]
    other = torch.where(pad, torch.randint(0, spec.vocab_size, x.shape, generator=gen), x)
    assert not torch.equal(other, x)

    def run(tokens: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(5)
            if topology == "decoder":
                return model.decode(tokens, pad)
            return model.decode(tokens, pad, model.encode(tokens, pad), pad)

    real = ~pad
    torch.testing.assert_close(run(x)[real], run(other)[real], rtol=0, atol=0)
    moes = [m for m in model.modules() if type(m).__name__ == "MixtureOfExperts"]
    assert moes and all(m.capacity_factor == 0.5 for m in moes)
    # the same model routing padding as tokens (what it did before) does depend on it
    for block in (b for stack in (model.encoder, model.decoder) if stack is not None for b in stack.blocks):
        block.ffn_takes_pad = False
    assert not torch.equal(run(x)[real], run(other)[real])


# -- code digests -------------------------------------------------------------------------------
PLUGIN_SOURCE = '''"""A digest fixture."""
from modtransfer import register_component, register_variant

SCALE = {scale}


@register_component("activation", "api_scaled_relu")
def scaled_relu(x):
    return x.clamp(min=0) * SCALE{comment}


@register_variant("api_scaled_relu", slot="activation")
def scaled_relu_variant(spec):
    return spec.replace(activation="api_scaled_relu")
'''


def test_code_digest_tracks_plugin_source(temporary_plugin: Loader, tmp_path: Path) -> None:
    assert code_digest("baseline") == "" and code_digest("swiglu+rmsnorm") == ""
    plugin = tmp_path / "digest_plugin.py"
    plugin.write_text(PLUGIN_SOURCE.format(scale=2.0, comment=""))
    assert temporary_plugin(plugin) is not None
    first = code_digest("api_scaled_relu")
    assert len(first) == 16
    assert code_digest("api_scaled_relu+rmsnorm") == first          # built-ins add nothing
    plugin.write_text(PLUGIN_SOURCE.format(scale=2.0, comment="  # a comment only"))
    assert code_digest("api_scaled_relu") == first                  # layout and comments do not count
    plugin.write_text(PLUGIN_SOURCE.format(scale=3.0, comment=""))
    assert code_digest("api_scaled_relu") not in ("", first)          # a constant the component uses does
    spec = resolve("swiglu", TINY).spec.replace(activation="api_scaled_relu")
    assert code_digest("swiglu", spec) != ""                        # the resolved spec's components count


def test_code_digest_covers_plugin_overriding_builtin_component(temporary_plugin: Loader) -> None:
    class LoudGELU(nn.Module):
        """Stands in for a plugin that replaces a built-in component on purpose."""

    from modtransfer.core.components import COMPONENTS

    original = COMPONENTS["activation"].entry("gelu")
    try:
        register_component("activation", "gelu", override=True)(LoudGELU)
        assert code_digest("gelu") != ""
    finally:
        COMPONENTS["activation"]._entries["gelu"] = original
    assert code_digest("gelu") == ""


# -- registries load the built-ins by themselves ------------------------------------------------
def test_fresh_process_registries_list_builtins_without_loading_torch_on_import() -> None:
    code = (
        "import sys\n"
        "from modtransfer import COMPONENTS, TASKS, VARIANTS\n"
        "assert 'torch' not in sys.modules, 'import modtransfer loaded torch'\n"
        "names = VARIANTS.names()\n"
        "assert {'baseline', 'swiglu', 'rmsnorm', 'switch'} <= set(names), names\n"
        "assert 'rmsnorm' in COMPONENTS['norm'] and {'lm', 'mt', 'regression'} <= set(TASKS.names())\n"
        "from modtransfer import register_variant\n"
        "@register_variant('elu', slot='activation', override=True)\n"
        "def mine(spec):\n"
        "    return spec\n"
        "assert VARIANTS.get('elu') is mine\n"
        "assert not VARIANTS.entry('elu').builtin and VARIANTS.entry('swiglu').builtin\n"
        "print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    # a built-in module imported directly, before any registry was read, still registers built-ins
    code = ("import modtransfer.variants.activations\n"
            "from modtransfer import COMPONENTS, code_digest\n"
            "assert COMPONENTS['activation'].entry('relu').builtin and code_digest('baseline') == ''\n"
            "print('OK')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
