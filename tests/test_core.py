"""ModelSpec, registries, variant composition and the model builder."""

from __future__ import annotations

import pytest
import torch

from modtransfer.builtins import load_builtins
from modtransfer.core.errors import ConflictError, UnknownNameError, UserError
from modtransfer.core.model import build, count_flops, count_params
from modtransfer.core.registry import Registry
from modtransfer.core.spec import ModelSpec
from modtransfer.core.validate import check_components
from modtransfer.core.variant import VARIANTS, canonical, parse_variant, resolve

load_builtins()
TINY = ModelSpec(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=50, max_len=32)


# -- ModelSpec ------------------------------------------------------------------------
def test_spec_round_trips_through_dict_and_yaml():
    import yaml

    spec = TINY.replace(adaptive_cutoffs=(10, 20), extra={"k": 1})
    again = ModelSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert again == spec and again.digest() == spec.digest()
    assert spec.digest() != TINY.digest()


@pytest.mark.parametrize("bad, message", [
    ({"d_model": 30, "n_heads": 4}, "not divisible"),
    ({"d_model": "64"}, "must be an integer"),
    ({"n_layers": 0}, "must be >= 1"),
    ({"dropout": 1.5}, "dropout"),
    ({"activation": 3}, "must be a string"),
    ({"d_model": True}, "must be an integer"),
])
def test_spec_validation(bad, message):
    with pytest.raises(UserError, match=message):
        ModelSpec(**bad)


def test_spec_unknown_field_suggests():
    with pytest.raises(UserError, match="did you mean 'd_model'"):
        ModelSpec.from_dict({"d_modle": 3})
    with pytest.raises(UserError, match="no field"):
        TINY.replace(width=3)


def test_spec_unknown_component_named():
    with pytest.raises(UnknownNameError, match="unknown norm component 'batchnorm'"):
        check_components(TINY.replace(norm="batchnorm"))


# -- registry -------------------------------------------------------------------------
def test_registry_globs_did_you_mean_and_duplicates():
    reg: Registry = Registry("widget")

    @reg.register("alpha_glu")
    def a():
        return 1

    @reg.register("beta_glu")
    def b():
        return 2

    reg.register("gamma", lambda: 3)
    assert reg.names("*glu") == ["alpha_glu", "beta_glu"]
    assert reg.select("gamma,*glu") == ["gamma", "alpha_glu", "beta_glu"]
    with pytest.raises(UnknownNameError, match="did you mean 'alpha_glu'"):
        reg.get("alpha_gl")
    with pytest.raises(UnknownNameError, match="no widget matches"):
        reg.select("zeta*")
    reg.register("alpha_glu", a)  # the same object again is harmless

    def a2():
        return 4

    with pytest.raises(ConflictError) as err:
        reg.register("alpha_glu", a2)
    assert "test_core" in str(err.value) and str(err.value).count("test_core.py") == 2


# -- variants -------------------------------------------------------------------------
def test_variant_parsing_and_parameters():
    parts = parse_variant("swiglu + rmsnorm")
    assert [p.name for p in parts] == ["swiglu", "rmsnorm"]
    assert canonical("swiglu+rmsnorm") == "swiglu+rmsnorm"
    with pytest.raises(UserError, match="did you mean"):
        parse_variant("swiglu+rmsnrom")
    with pytest.raises(UserError, match="cannot be combined"):
        parse_variant("baseline+gelu")
    with pytest.raises(UserError, match="twice"):
        parse_variant("gelu+gelu")
    with pytest.raises(UserError, match="parameters"):
        parse_variant("gelu(1 +)")


def test_composition_applies_both_and_conflicts_name_both():
    spec = resolve("swiglu+rmsnorm", TINY).spec
    assert (spec.ffn, spec.activation, spec.norm, spec.d_ff) == ("glu", "swish", "rmsnorm", round(64 * 2 / 3))
    with pytest.raises(ConflictError) as err:
        resolve("swiglu+geglu", TINY)
    assert "'swiglu'" in str(err.value) and "'geglu'" in str(err.value)


def test_gated_variants_match_parameters():
    base = count_params(TINY, "decoder")
    for name in ("glu", "geglu", "reglu", "swiglu", "liglu"):
        assert VARIANTS.entry(name).meta["matches"] == "params"
        assert abs(count_params(resolve(name, TINY).spec, "decoder") - base) / base < 0.02


def test_flops_counted_and_positive():
    f = count_flops(TINY, "decoder", 16)
    # two matmuls of the FFN alone: 2 * 2 * d * d_ff per token per layer
    assert f > 2 * 2 * 32 * 64 * 2
    assert count_flops(TINY, "encoder_decoder", 16) > f


# -- model ----------------------------------------------------------------------------
@pytest.mark.parametrize("topology", ["decoder", "encoder", "encoder_decoder"])
def test_topologies_forward_backward(topology):
    torch.manual_seed(0)
    model = build(TINY, topology)
    x = torch.randint(0, 50, (3, 9))
    if topology == "encoder":
        h = model.encode(x)
    elif topology == "decoder":
        h = model.decode(x)
    else:
        h = model.decode(x[:, :7], memory=model.encode(x))
    nll = model.token_nll(h, torch.randint(0, 50, h.shape[:2]))
    assert nll.shape == h.shape[:2] and torch.isfinite(nll).all()
    nll.mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    logp = model.log_probs(h)
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(()), atol=1e-4)


def test_ignore_index_gives_zero_nll():
    model = build(TINY, "decoder")
    x = torch.randint(0, 50, (2, 6))
    t = x.clone()
    t[:, 3:] = -100
    nll = model.token_nll(model.decode(x), t)
    assert (nll[:, 3:] == 0).all() and (nll[:, :3] > 0).all()


@pytest.mark.parametrize("variant", ["baseline", "post_ln", "swiglu", "rmsnorm"])
def test_decoder_is_causal(variant):
    torch.manual_seed(0)
    model = build(resolve(variant, TINY).spec, "decoder").eval()
    x = torch.randint(0, 50, (2, 12))
    for t in (0, 5, 10):
        y = x.clone()
        y[:, t + 1:] = (y[:, t + 1:] + 7) % 50
        a, b = model.decode(x), model.decode(y)
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_encoder_decoder_cross_attention_sees_source_and_respects_padding():
    torch.manual_seed(0)
    model = build(TINY, "encoder_decoder").eval()
    src = torch.randint(1, 50, (2, 8))
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[:, 6:] = True
    tgt = torch.randint(1, 50, (2, 5))
    out = model.decode(tgt, memory=model.encode(src, pad), memory_pad_mask=pad)
    src2 = src.clone()
    src2[:, 6:] = 0  # only padding changes
    out2 = model.decode(tgt, memory=model.encode(src2, pad), memory_pad_mask=pad)
    assert torch.allclose(out, out2, atol=1e-5)
    src3 = src.clone()
    src3[:, 0] = (src3[:, 0] + 1) % 50  # a real source token changes
    out3 = model.decode(tgt, memory=model.encode(src3, pad), memory_pad_mask=pad)
    assert not torch.allclose(out, out3)


def test_continuous_io_encoder():
    spec = ModelSpec(d_model=32, n_layers=1, n_heads=2, d_ff=64, in_features=100, out_features=50, max_len=10)
    model = build(spec, "encoder")
    out = model.project(model.encode(torch.randn(4, 10, 100)))
    assert out.shape == (4, 10, 50)


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build(TINY, "encoder_decoder").eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(2)
    other = build(TINY, "encoder_decoder").eval()
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randint(0, 50, (2, 7))
    assert torch.equal(model(x, x), other(x, x))


def test_every_variant_module_is_loaded_in_the_registry_order():
    from pathlib import Path

    from modtransfer.builtins import VARIANT_MODULES

    folder = Path(__file__).resolve().parent.parent / "variants"
    files = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert sorted(VARIANT_MODULES) == sorted(files) and len(set(VARIANT_MODULES)) == len(VARIANT_MODULES)
