"""Init schemes with a scope: Linear weights only (the default) or every parameter."""

from __future__ import annotations

import pytest
import torch

from modtransfer.core.errors import UserError
from modtransfer.core.model import build
from modtransfer.core.sizes import size_preset
from modtransfer.core.variant import resolve


def _params(expr: str) -> dict[str, torch.Tensor]:
    spec = resolve(expr, size_preset("tiny")).spec.replace(in_features=20, out_features=10, max_len=10)
    torch.manual_seed(0)
    return {n: p.detach() for n, p in build(spec, "encoder").named_parameters()}


def test_weights_scope_leaves_norms_and_zeroes_biases() -> None:
    p = _params("init_normal(std=0.1)")
    gains = [v for n, v in p.items() if n.endswith("norm.weight")]
    biases = [v for n, v in p.items() if n.endswith(".bias") and "norm" not in n]
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains)
    assert all(not b.any() for b in biases)


def test_all_scope_draws_every_parameter() -> None:
    p = _params("init_normal(std=0.1, scope=all)")
    gains = torch.cat([v for n, v in p.items() if n.endswith("norm.weight")])
    assert abs(float(gains.mean())) < 0.05 and 0.07 < float(gains.std()) < 0.13   # N(0, 0.1), not 1
    biases = torch.cat([v for n, v in p.items() if n.endswith(".bias")])
    assert 0.07 < float(biases.std()) < 0.13


def test_fan_based_schemes_with_all_scope_draw_every_matrix_only() -> None:
    p = _params("init_xavier_uniform(scope=all)")
    gains = [v for n, v in p.items() if n.endswith("norm.weight")]
    assert all(torch.equal(g, torch.ones_like(g)) for g in gains)   # undefined for vectors: left as built
    w = p["in_proj.weight"]
    bound = (6.0 / (w.shape[0] + w.shape[1])) ** 0.5
    assert float(w.abs().max()) <= bound + 1e-6


def test_bad_scope_is_refused() -> None:
    with pytest.raises(UserError, match="scope must be 'weights'"):
        resolve("init_uniform(scope=everything)", size_preset("tiny"))


def test_matrices_scope_is_the_idiom_after_the_implementations_init() -> None:
    """``scope=matrices``: ``for p in model.parameters(): if p.dim() > 1: init_(p)`` on the built model."""
    from modtransfer.core.implementations import apply_implementation

    base = apply_implementation("torch", size_preset("tiny")).replace(in_features=20, out_features=10, max_len=10)
    spec = resolve("init_xavier_uniform(scope=matrices)", base).spec
    torch.manual_seed(0)
    p = {n: v.detach() for n, v in build(spec, "encoder").named_parameters()}
    qkv = p["encoder.blocks.0.attn.sublayer.qkv.weight"]            # fused [3d, d], drawn as one matrix
    bound = (6.0 / (qkv.shape[0] + qkv.shape[1])) ** 0.5
    assert 0.95 * bound < float(qkv.abs().max()) <= bound + 1e-6
    w = p["in_proj.weight"]                                             # the input Linear is a matrix too
    assert 0.95 * (6.0 / sum(w.shape)) ** 0.5 < float(w.abs().max()) <= (6.0 / sum(w.shape)) ** 0.5 + 1e-6
    # every layer drawn on its own after the torch profile cloned them; biases and gains as PyTorch built them
    assert not torch.equal(qkv, p["encoder.blocks.1.attn.sublayer.qkv.weight"])
    assert torch.equal(p["encoder.blocks.0.ffn.sublayer.w1.bias"], p["encoder.blocks.1.ffn.sublayer.w1.bias"])
    assert p["encoder.blocks.0.ffn.sublayer.w1.bias"].abs().max() > 0            # Linear's own U(+-1/sqrt(fan_in))
    assert not p["encoder.blocks.0.attn.sublayer.qkv.bias"].any()                 # MultiheadAttention's zeros
    assert all(torch.equal(v, torch.ones_like(v)) for n, v in p.items() if n.endswith("norm.weight"))
    assert dict(spec.extra)["init_base"] == "torch"


def test_matrices_scope_of_a_vector_scheme_leaves_vectors() -> None:
    p, built = _params("init_normal(std=0.1, scope=matrices)"), _params("baseline")
    vectors = [n for n, v in p.items() if v.dim() == 1]
    assert any(n.endswith(".bias") for n in vectors) and any(n.endswith("norm.weight") for n in vectors)
    assert all(torch.equal(p[n], built[n]) for n in vectors)          # as the model was built (seeded alike)
    w = p["encoder.blocks.0.ffn.sublayer.w1.weight"]
    assert 0.09 < float(w.std()) < 0.11                                # while every matrix is N(0, 0.1)
