"""Common random numbers at initialisation (``ModelSpec.init_draws``, :mod:`modtransfer.core.draws`).

With per-module draws a tensor's initial values depend only on (seed, its place in the model):
the arms of a paired comparison start every tensor the variant does not change from the same
numbers, two seeds still differ, and a build leaves the caller's generator where it was. The
``torch`` profile keeps PyTorch's one-stream draw order (its fidelity to ``torch.nn`` is tested
against the same generator state in tests/test_implementations.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from modtransfer.builtins import load_builtins
from modtransfer.core.draws import Draws, place_seed
from modtransfer.core.errors import UserError
from modtransfer.core.implementations import apply_implementation
from modtransfer.core.model import build
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import VARIANTS, resolve

load_builtins()
SHAPE = ModelSpec(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
TOPOLOGIES = ("decoder", "encoder_decoder")


def base_spec(vocab: bool = True) -> ModelSpec:
    spec = apply_implementation("modtransfer", SHAPE)
    return spec.replace(vocab_size=40) if vocab else spec.replace(in_features=6, out_features=3)


def weights(expr: str, topology: str, seed: int, spec: ModelSpec | None = None) -> dict[str, Tensor]:
    spec = resolve(expr, spec or base_spec()).spec
    torch.manual_seed(12345)   # whatever the caller's generator holds, per-module draws ignore it
    model = build(spec, topology, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def random_tensors(state: dict[str, Tensor]) -> list[str]:
    """Names of the tensors that hold drawn numbers (not constants such as norm gains or sinusoids)."""
    return [k for k, v in state.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0
            and "position" not in k and "norm" not in k]


def test_the_modtransfer_profile_draws_per_module_and_torch_keeps_one_stream() -> None:
    assert base_spec().init_draws == "per_module"
    assert apply_implementation("t5", SHAPE).init_draws == "per_module"
    assert apply_implementation("gpt2", SHAPE).init_draws == "per_module"
    assert apply_implementation("torch", SHAPE).init_draws == "global"
    assert ModelSpec().init_draws == "global" and "init_draws" not in ModelSpec().to_dict()
    # new draws, new cell ids: the field is in what ids hash once it leaves the old behaviour
    assert base_spec().to_dict()["init_draws"] == "per_module"
    assert base_spec().digest() != base_spec().replace(init_draws="global").digest()
    assert ModelSpec.from_dict(base_spec().to_dict()) == base_spec()
    with pytest.raises(UserError, match="init_draws must be one of global, per_module"):
        ModelSpec(init_draws="sometimes")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_a_shape_matched_variant_starts_from_the_baselines_tensors(topology: str) -> None:
    base, gelu = weights("baseline", topology, 3), weights("gelu", topology, 3)
    assert base.keys() == gelu.keys()
    assert all(torch.equal(base[k], gelu[k]) for k in base), [k for k in base if not torch.equal(base[k], gelu[k])]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_swiglu_changes_only_the_ffns(topology: str) -> None:
    base, swiglu = weights("baseline", topology, 3), weights("swiglu", topology, 3)
    outside = [k for k in base if ".ffn." not in k]
    assert {k for k in swiglu if ".ffn." not in k} == set(outside)
    assert len(random_tensors({k: base[k] for k in outside})) >= 3   # embeddings and attention at least
    for k in outside:
        assert torch.equal(base[k], swiglu[k]), k
    assert any(".ffn." in k for k in swiglu)


def test_an_encoder_without_vocabulary_shares_its_draws_too() -> None:
    spec = base_spec(vocab=False)
    base, gelu = weights("baseline", "encoder", 0, spec), weights("gelu", "encoder", 0, spec)
    assert all(torch.equal(base[k], gelu[k]) for k in base)
    swiglu = weights("swiglu", "encoder", 0, spec)
    assert all(torch.equal(base[k], swiglu[k]) for k in base if ".ffn." not in k)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_two_seeds_differ_in_every_drawn_tensor(topology: str) -> None:
    a, b = weights("baseline", topology, 0), weights("baseline", topology, 1)
    drawn = random_tensors(a)
    assert len(drawn) >= 5
    assert not any(torch.equal(a[k], b[k]) for k in drawn)
    assert all(torch.equal(a[k], weights("baseline", topology, 0)[k]) for k in a)   # and a seed repeats


def test_init_schemes_draw_each_parameter_from_its_name() -> None:
    """A scheme that redraws every weight keeps the variant's other tensors common to both arms."""
    for scheme in ("init_normal", "init_xavier_uniform(scope=all)", "init_kaiming_normal"):
        plain, with_swiglu = weights(scheme, "decoder", 5), weights(f"{scheme}+swiglu", "decoder", 5)
        outside = [k for k in plain if ".ffn." not in k]
        assert all(torch.equal(plain[k], with_swiglu[k]) for k in outside), scheme
    base, normal = weights("baseline", "decoder", 5), weights("init_normal", "decoder", 5)
    assert torch.equal(base["embedding.weight"], normal["embedding.weight"])   # weights scope: embeddings kept
    w1 = "decoder.blocks.0.ffn.sublayer.w1.weight"
    assert not torch.equal(base[w1], normal[w1])


def test_a_seeded_build_leaves_the_callers_generator_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    build(resolve("swiglu", base_spec()).spec, "encoder_decoder", seed=11)
    assert torch.equal(torch.rand(4), expected)


def test_global_draws_ignore_the_seed_and_keep_the_construction_order() -> None:
    spec = apply_implementation("torch", SHAPE).replace(vocab_size=40)
    torch.manual_seed(2)
    seeded = build(spec, "decoder", seed=99).state_dict()
    after_seeded = torch.rand(3)
    torch.manual_seed(2)
    plain = build(spec, "decoder").state_dict()
    assert all(torch.equal(seeded[k], plain[k]) for k in plain)
    assert torch.equal(after_seeded, torch.rand(3))   # the build consumed the global stream, as before
    assert build(base_spec(), "decoder").init_seed is None   # no seed: per-module specs draw globally too


def test_place_seeds_are_stable_and_distinct() -> None:
    assert place_seed(0, "decoder.blocks.0.ffn") == place_seed(0, "decoder.blocks.0.ffn")
    assert len({place_seed(s, p) for s in range(3) for p in ("embedding", "decoder.blocks.0.ffn", "init")}) == 9
    assert 0 <= place_seed(2**32 - 1, "x") < 2**63
    assert not Draws(3, "global").active and Draws(3, "per_module").active and not Draws(None, "per_module").active


@pytest.mark.parametrize("variant", VARIANTS.names())
def test_every_variant_builds_with_per_module_draws(variant: str) -> None:
    from modtransfer.core.implementations import implementation_conflict

    spec = base_spec()
    rv = resolve(variant, spec)
    if implementation_conflict("modtransfer", rv, base=spec):
        pytest.skip("cannot run on the modtransfer baseline")
    topology = "encoder_decoder" if "encoder_decoder" in rv.requires else "decoder"
    a = build(rv.spec, topology, seed=4).state_dict()
    b = build(rv.spec, topology, seed=4).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
