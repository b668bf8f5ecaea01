"""The zoo's embeddings, output layers, mixtures of experts and depth.

``test_matched_variant_stays_matched`` is parametrised over every registered variant that
declares ``matches`` (built-in or plugin), every size preset and every topology it applies to.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from modtransfer.builtins import load_builtins
from modtransfer.core.errors import UserError
from modtransfer.core.model import build, count_flops, count_params
from modtransfer.core.sizes import size_names, size_preset
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import VARIANTS, resolve
from modtransfer.variants.depth import rescale_depth
from modtransfer.variants.embeddings import AdaptiveInput, FactorizedEmbedding
from modtransfer.variants.moe import MixtureOfExperts, load_balancing_loss
from modtransfer.variants.output import (
    AdaptiveSoftmax,
    AdaptiveSoftmaxNoProjection,
    MixtureOfSoftmaxes,
    adaptive_bounds,
)

load_builtins()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matmuls on a shared machine: extra threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- matching at every size preset ------------------------------------------------------
#: (name, topology, task fields, capabilities a task of that kind offers)
TOPOLOGIES = (
    ("decoder", "decoder", {"vocab_size": 256}, {"decoder", "vocab", "causal"}),
    ("encoder", "encoder", {"in_features": 8, "out_features": 4}, {"encoder"}),
    ("encoder_decoder", "encoder_decoder", {"vocab_size": 256}, {"encoder_decoder", "vocab", "causal", "padding"}),
)
SEQ_LEN = 64


def _applies(name: str, caps: set[str]) -> bool:
    meta = VARIANTS.entry(name).meta
    return meta["requires"] <= caps and (not meta["requires_any"] or bool(meta["requires_any"] & caps))


MATCHED = [
    pytest.param(name, size, topo, id=f"{name}-{size}-{label}")
    for name in VARIANTS.names() if VARIANTS.entry(name).meta["matches"] in ("params", "flops")
    for size in size_names()
    for label, topo, _, caps in TOPOLOGIES if _applies(name, caps)
]


@functools.cache
def _base(size: str, topology: str) -> ModelSpec:
    fields = next(f for label, topo, f, _ in TOPOLOGIES if topo == topology)
    return size_preset(size).replace(**fields)


@functools.cache
def _baseline_count(size: str, topology: str, kind: str) -> float:
    spec = _base(size, topology)
    return float(count_params(spec, topology) if kind == "params" else count_flops(spec, topology, SEQ_LEN))


def test_matched_variants_include_the_zoo() -> None:
    ids = {p.id for p in MATCHED}
    for name in ("switch", "moe", "depth_x2", "depth_x1.5", "depth_x0.67", "depth_x0.5", "depth"):
        assert f"{name}-tiny-decoder" in ids and f"{name}-base-encoder_decoder" in ids


@pytest.mark.parametrize(("variant", "size", "topology"), MATCHED)
def test_matched_variant_stays_matched(variant: str, size: str, topology: str) -> None:
    kind = VARIANTS.entry(variant).meta["matches"]
    spec = resolve(variant, _base(size, topology)).spec
    assert spec != _base(size, topology) or spec.n_layers == 1, f"{variant} changed nothing at {size}"
    got = float(count_params(spec, topology) if kind == "params" else count_flops(spec, topology, SEQ_LEN))
    want = _baseline_count(size, topology, kind)
    assert abs(got / want - 1) <= 0.02, f"{variant} at {size} ({topology}): {kind} {got:,.0f} vs {want:,.0f}"


# -- depth ------------------------------------------------------------------------------
def test_depth_follows_narang_rows_at_their_shape() -> None:
    """From 12 layers / d_ff 3072 / 12 heads of 64, Narang et al.'s rows (L d_ff and L H constant)."""
    base = ModelSpec(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_len=64, vocab_size=100)
    rows = {2.0: (24, 6, 1536), 1.5: (18, 8, 2048), 2 / 3: (8, 18, 4608), 0.5: (6, 24, 6144)}
    for factor, (layers, heads, d_ff) in rows.items():
        spec = rescale_depth(base, factor)
        assert (spec.n_layers, spec.n_heads, spec.head_dim) == (layers, heads, 64)
        assert abs(spec.d_ff - d_ff) <= 8, (factor, spec.d_ff)


def test_depth_rejects_bad_factors() -> None:
    with pytest.raises(UserError, match="positive"):
        resolve("depth(factor=0)", size_preset("tiny"))
    with pytest.raises(UserError, match="no room for the FFN"):
        rescale_depth(ModelSpec(d_model=32, n_layers=2, n_heads=4, d_ff=8, vocab_size=10), 8.0)


# -- adaptive softmax -------------------------------------------------------------------
V, D = 60, 32


def _spec(**kw: object) -> ModelSpec:
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": V, "max_len": 16, **kw}
    return ModelSpec(**fields)  # type: ignore[arg-type]


def _targets(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    targets = torch.randint(0, V, shape, generator=gen)
    targets[0, :2] = -100
    return targets


@pytest.mark.parametrize("cls", [AdaptiveSoftmax, AdaptiveSoftmaxNoProjection, MixtureOfSoftmaxes])
@pytest.mark.parametrize("tied", [True, False])
def test_output_log_probs_normalise_and_match_token_nll(cls: type, tied: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = cls(_spec(), D, tied)
    weight = torch.randn(V, D, generator=gen) / math.sqrt(D) if tied else None
    h = torch.randn(3, 7, D, generator=gen)
    targets = _targets((3, 7), gen)
    lp = layer.log_probs(h, weight)
    assert lp.shape == (3, 7, V)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)
    nll = layer.token_nll(h, targets, weight)
    want = -lp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    keep = targets != -100
    torch.testing.assert_close(nll[keep], want[keep], atol=1e-5, rtol=1e-5)
    assert bool((nll[~keep] == 0).all())


def test_adaptive_softmax_clusters_and_dims() -> None:
    assert adaptive_bounds(_spec()) == [0, 6, 20, V]
    assert adaptive_bounds(_spec(adaptive_cutoffs=(10, 30))) == [0, 10, 30, V]
    with pytest.raises(UserError, match="adaptive_cutoffs"):
        adaptive_bounds(_spec(adaptive_cutoffs=(30, 10)))
    with pytest.raises(UserError, match="below vocab_size"):
        adaptive_bounds(_spec(adaptive_cutoffs=(10, V)))
    untied = AdaptiveSoftmax(_spec(), D, tied=False)
    assert untied.short is not None and untied.short.weight.shape == (6, D)
    assert untied.cluster is not None and untied.cluster.weight.shape == (2, D)
    assert [t.out.weight.shape for t in untied.tails] == [(14, 8), (40, 2)]  # D/4, D/16
    tied = AdaptiveSoftmax(_spec(), D, tied=True)
    assert tied.short is None and all(t.out is None for t in tied.tails)
    flat = AdaptiveSoftmaxNoProjection(_spec(), D, tied=False)
    assert all(t.proj is None and t.out.weight.shape[1] == D for t in flat.tails)


def test_adaptive_softmax_scores_tails_only_for_their_tokens() -> None:
    """Tail i's projection sees exactly the tokens whose target falls in tail i."""
    layer = AdaptiveSoftmax(_spec(), D, tied=False)
    seen: list[int] = []
    for tail in layer.tails:
        tail.proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    targets = torch.tensor([[0, 1, 7, 8, 9, 25, -100]])
    layer.token_nll(torch.randn(1, 7, D), targets, None)
    assert seen == [3, 1]


# -- mixture of softmaxes ---------------------------------------------------------------
def test_mixture_of_softmaxes_with_one_component_is_a_softmax() -> None:
    torch.manual_seed(0)
    layer = MixtureOfSoftmaxes(_spec(n_softmaxes=1), D, tied=True)
    weight, h = torch.randn(V, D), torch.randn(2, 5, D)
    want = F.log_softmax(F.linear(torch.tanh(layer.context(h)), weight), dim=-1)
    torch.testing.assert_close(layer.log_probs(h, weight), want, atol=1e-5, rtol=1e-5)


def test_mixture_of_softmaxes_count_and_mixing() -> None:
    assert resolve("mixture_of_softmaxes", size_preset("base").replace(vocab_size=100)).spec.n_softmaxes == 15
    assert resolve("mixture_of_softmaxes", size_preset("tiny").replace(vocab_size=100)).spec.n_softmaxes == 2
    torch.manual_seed(0)
    layer = MixtureOfSoftmaxes(_spec(n_softmaxes=3), D, tied=False)
    h = torch.randn(4, D)
    prior = F.softmax(layer.prior(h), -1)
    comps = F.softmax(layer.proj(layer.contexts(h)), -1)  # [4, 3, V]
    torch.testing.assert_close(layer.log_probs(h, None).exp(), (prior[..., None] * comps).sum(1), atol=1e-6, rtol=1e-5)


# -- mixture of experts -----------------------------------------------------------------
def _moe(top_k: int, capacity: float = 0.0) -> MixtureOfExperts:
    torch.manual_seed(0)
    spec = _spec(n_experts=4, moe_top_k=top_k, extra={"capacity_factor": capacity} if capacity else {})
    return MixtureOfExperts(spec, F.relu, top_k=top_k)


def _rows_per_expert(layer: MixtureOfExperts, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    rows: list[int] = []
    hooks = [e.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0])) for e in layer.experts]
    out = layer(x)
    for hook in hooks:
        hook.remove()
    return out, rows


def test_switch_routes_each_token_to_exactly_one_expert() -> None:
    layer = _moe(1)
    x = torch.randn(2, 9, D)
    out, rows = _rows_per_expert(layer, x)
    assert sum(rows) == 18
    tokens = x.reshape(-1, D)
    probs, _, experts = layer.route(tokens)
    want = torch.stack([probs[t, e] * layer.experts[int(e)](tokens[t]) for t, e in enumerate(experts[:, 0])])
    torch.testing.assert_close(out.reshape(-1, D), want, atol=1e-5, rtol=1e-5)


def test_top2_mixes_two_experts_with_renormalised_gates() -> None:
    layer = _moe(2)
    assert layer.experts[0].w1.out_features == 32  # d_ff / 2: FLOPs of one dense FFN
    x = torch.randn(1, 6, D)
    out, rows = _rows_per_expert(layer, x)
    assert sum(rows) == 12
    probs, gates, experts = layer.route(x[0])
    torch.testing.assert_close(gates.sum(-1), torch.ones(6))
    assert bool((experts[:, 0] != experts[:, 1]).all())
    want = torch.stack([sum(g * layer.experts[int(e)](x[0, t]) for g, e in zip(gates[t], experts[t], strict=True))
                        for t in range(6)])
    torch.testing.assert_close(out[0], want, atol=1e-5, rtol=1e-5)


def test_load_balancing_loss_on_a_hand_made_routing() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    # f = (3/4, 1/4), P = (0.65, 0.35): 2 * (0.75 * 0.65 + 0.25 * 0.35) = 1.15
    assert float(load_balancing_loss(probs, probs.argmax(-1))) == pytest.approx(1.15)
    uniform = torch.full((8, 4), 0.25)
    assert float(load_balancing_loss(uniform, torch.arange(8) % 4)) == pytest.approx(1.0)
    layer = _moe(1)
    layer(torch.randn(2, 5, D))
    assert layer.aux_loss is not None and layer.aux_loss.ndim == 0 and float(layer.aux_loss.detach()) >= 1.0 - 1e-6


def test_capacity_drops_overflow_in_training_only_and_stays_causal() -> None:
    layer = _moe(1, capacity=0.5)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 1.0  # every token with a positive sum goes to expert 0
    x = torch.randn(2, 8, D).abs()
    layer.train()
    out, rows = _rows_per_expert(layer, x)
    assert rows == [2]  # ceil(0.5 * 16 / 4) = 2 of 16 tokens, the earliest positions
    kept = out.abs().sum(-1) > 0
    assert kept[:, 0].all() and not kept[:, 1:].any()
    changed = x.clone()
    changed[:, 1:] = torch.randn(2, 7, D).abs()
    torch.testing.assert_close(layer(changed)[:, 0], out[:, 0])
    layer.eval()
    assert sum(_rows_per_expert(layer, x)[1]) == 16


def test_moe_flop_count_does_not_depend_on_routing() -> None:
    """A skewed real routing costs what the (data-free) meta count says."""
    layer = _moe(1)
    with torch.no_grad():
        layer.router.weight[1:] = 0.0
        layer.router.weight[0] = 1.0
    x = torch.randn(3, 10, D).abs()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        layer(x)
    real = counter.get_total_flops()
    meta_layer = layer.to("meta")
    meta_counter = FlopCounterMode(display=False)
    with meta_counter, torch.no_grad():
        meta_layer(torch.empty(3, 10, D, device="meta"))
    assert real == meta_counter.get_total_flops()
    dense = 2 * 30 * (D * 4 + 2 * D * 64)  # router + one d_ff-wide FFN per token
    assert real == dense


def test_moe_layers_alternate_and_variants_set_experts() -> None:
    spec = resolve("switch", _spec(n_layers=4)).spec
    assert (spec.ffn, spec.n_experts, spec.moe_top_k) == ("switch", 4, 1)
    model = build(spec, "decoder")
    kinds = [type(block.ffn.sublayer).__name__ for block in model.decoder.blocks]
    assert kinds == ["DenseFFN", "MixtureOfExperts", "DenseFFN", "MixtureOfExperts"]
    spec2 = resolve("moe(capacity_factor=1.25)", _spec()).spec
    assert (spec2.ffn, spec2.moe_top_k, spec2.option("capacity_factor")) == ("moe", 2, 1.25)
    with pytest.raises(UserError, match="capacity_factor"):
        resolve("switch(capacity_factor=-1)", _spec())


# -- embeddings -------------------------------------------------------------------------
def test_factorized_embedding_parameters() -> None:
    spec = resolve("factorized_embedding", _spec()).spec
    e = spec.d_embed
    assert e == 8  # d_model / 4
    assert resolve("factorized_embedding", size_preset("base").replace(vocab_size=100)).spec.d_embed == 128
    for name, output_extra in (("factorized_embedding", V * D), ("factorized_shared_embedding", 0)):
        model = build(resolve(name, _spec()).spec, "decoder")
        assert isinstance(model.embedding, FactorizedEmbedding)
        assert sum(p.numel() for p in model.embedding.parameters()) == V * e + e * D
        assert sum(p.numel() for p in model.output.parameters()) == output_extra
    assert model.embedding.output_dim == e and model.embedding.to_output(torch.randn(2, D)).shape == (2, e)


def test_adaptive_input_shapes_and_rows() -> None:
    torch.manual_seed(0)
    emb = AdaptiveInput(_spec(), "decoder")
    assert emb.bounds == [0, 6, 20, V]
    assert [tuple(t.shape) for t in emb.tables] == [(6, D), (14, D // 4), (40, D // 16)]
    tokens = torch.tensor([[0, 5, 6, 19, 20, 59]])
    x = emb.embed(tokens, "decoder")
    assert x.shape == (1, 6, D)
    scale = math.sqrt(D)
    torch.testing.assert_close(x[0, 1], emb.tables[0][5] * scale)
    torch.testing.assert_close(x[0, 3], emb.projs[1](emb.tables[1][13]) * scale)
    torch.testing.assert_close(x[0, 5], emb.projs[2](emb.tables[2][39]) * scale)
    assert emb.output_weight().shape == (V, D)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def test_tied_variants_share_storage_as_declared() -> None:
    tok = torch.tensor([[1, 2, 3]])
    model = build(resolve("tied_encoder_decoder_input", _spec()).spec, "encoder_decoder")
    emb = model.embedding
    assert emb.output_weight() is None and model.output.proj is not None
    assert _ptr(model.output.proj.weight) != _ptr(emb.weight)
    torch.testing.assert_close(emb.embed(tok, "encoder"), emb.embed(tok, "decoder"))

    model = build(resolve("tied_decoder_input_output", _spec()).spec, "encoder_decoder")
    emb = model.embedding
    assert _ptr(emb.output_weight()) == _ptr(emb.tables["decoder"]) != _ptr(emb.tables["encoder"])
    assert model.output.proj is None

    model = build(resolve("factorized_shared_embedding", _spec()).spec, "encoder_decoder")
    assert _ptr(model.embedding.output_weight()) == _ptr(model.embedding.table)

    model = build(_spec(), "encoder_decoder")  # baseline: one matrix for everything
    assert _ptr(model.embedding.output_weight()) == _ptr(model.embedding.weight)

    model = build(resolve("adaptive_input", _spec()).spec, "decoder")  # tied through autograd
    model.token_nll(torch.randn(1, 3, D), torch.tensor([[0, 10, 40]])).sum().backward()
    assert all(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in model.embedding.tables)


def test_block_sharing_combinations() -> None:
    spec = resolve("block_sharing_factorized_shared_embedding", _spec()).spec
    assert (spec.sharing, spec.embedding, spec.d_embed) == ("all", "factorized_shared", 8)
    shared = count_params(spec, "encoder_decoder")
    unshared = count_params(resolve("factorized_shared_embedding", _spec()).spec, "encoder_decoder")
    assert shared < unshared
    spec = resolve("block_sharing_factorized_embedding", _spec()).spec
    assert (spec.sharing, spec.embedding) == ("all", "factorized")


ZOO_B = [
    name for name in VARIANTS.names()
    if VARIANTS.entry(name).meta["slot"] in ("embedding", "output")
] + ["block_sharing_factorized_embedding", "block_sharing_factorized_shared_embedding",
     "adaptive_input+adaptive_softmax", "factorized_shared_embedding+mixture_of_softmaxes", "switch", "moe"]


@pytest.mark.parametrize("topology", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("variant", ZOO_B)
def test_variant_builds_and_backprops(variant: str, topology: str) -> None:
    torch.manual_seed(0)
    model = build(resolve(variant, _spec()).spec, topology)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (4, 10), generator=gen)
    targets = torch.randint(0, V, (4, 10), generator=gen)
    targets[:, -1] = -100
    h = model(x) if topology == "decoder" else model(x, torch.randint(0, V, (4, 10), generator=gen))
    nll = model.token_nll(h, targets)
    loss = nll.sum() / (targets != -100).sum() + model.aux_loss()
    assert torch.isfinite(loss)
    loss.backward()
    routed = ("switch", "moe")
    for name, p in model.named_parameters():
        if variant in routed and ".experts." in name:
            continue
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), f"{variant}: no gradient for {name}"


@pytest.mark.parametrize("topology", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("variant", ZOO_B)
def test_variant_flops_can_be_counted(variant: str, topology: str) -> None:
    spec = resolve(variant, _spec(vocab_size=2000)).spec
    assert count_flops(spec, topology, 16) > 0


def test_adaptive_softmax_flop_count_uses_zipf_shares() -> None:
    layer = AdaptiveSoftmax(_spec(), D, tied=False)
    harmonic = [sum(1 / r for r in range(1, n + 1)) for n in (6, 20, V)]
    assert layer.tail_shares == pytest.approx([(harmonic[1] - harmonic[0]) / harmonic[2], 1 - harmonic[1] / harmonic[2]])
    seen: list[int] = []
    for tail in layer.tails:
        tail.proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    meta_layer = layer.to("meta")
    meta_layer.token_nll(torch.empty(1, 100, D, device="meta"), torch.empty(1, 100, dtype=torch.long, device="meta"), None)
    assert seen == [round(100 * share) for share in layer.tail_shares]


def test_adaptive_softmax_counts_fewer_flops_than_a_full_softmax() -> None:
    base = _spec(vocab_size=2000)
    full = count_flops(base, "decoder", 16)
    for variant in ("adaptive_softmax", "adaptive_softmax_no_projection", "adaptive_input+adaptive_softmax"):
        assert count_flops(resolve(variant, base).spec, "decoder", 16) < full, variant
    assert count_flops(resolve("mixture_of_softmaxes", base).spec, "decoder", 16) > full
