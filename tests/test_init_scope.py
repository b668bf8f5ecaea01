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
