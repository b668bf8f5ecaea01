"""The zoo's positions, attention, residual placements, initialisations and block sharing.

Each component is checked for the property that makes it what its paper says it is, on tiny
models (d_model 32-64, 1-2 layers).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from modtransfer.core.components import component
from modtransfer.core.errors import UserError
from modtransfer.core.model import build, count_params
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import VARIANTS, resolve
from modtransfer.variants.attention import (
    LinearAttention,
    MultiHeadAttention,
    causal_linear_attention,
    elu_feature_map,
    linear_attention,
)
from modtransfer.variants.position import alibi_slopes, relative_position_bucket
from modtransfer.variants.residual import DeepNorm, Fixup, ReZero, branch_weights, deepnorm_constants

VOCAB = 40
TINY = ModelSpec(d_model=32, n_layers=2, n_heads=4, d_ff=64, vocab_size=VOCAB, max_len=48)


def spec_for(variant: str, base: ModelSpec = TINY) -> ModelSpec:
    return resolve(variant, base).spec


def continuous(base: ModelSpec = TINY, **changes: object) -> ModelSpec:
    return base.replace(vocab_size=0, in_features=8, out_features=3, **changes)


# -- RoPE ----------------------------------------------------------------------------------
def test_rope_rotation_keeps_norms_and_logits_depend_only_on_offset() -> None:
    rope = component("position", "rope")(TINY.replace(d_head=16, max_len=64), causal=False)
    torch.manual_seed(0)
    t = 20
    q = torch.randn(1, 1, 1, 16).expand(2, 3, t, 16)   # the same vector at every position
    k = torch.randn(1, 1, 1, 16).expand(2, 3, t, 16)
    rq, rk = rope.rotate(q, k)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    scores = rq @ rk.transpose(-1, -2)
    for shift in (1, 5, 11):
        torch.testing.assert_close(scores[..., shift:, shift:], scores[..., :-shift, :-shift], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scores[..., 0, 1], scores[..., 0, 2])   # but it does depend on the offset
    assert torch.allclose(rq[..., 0, :], q[..., 0, :])                 # position 0 is not rotated


def test_rope_limits_and_odd_head_dim() -> None:
    rope = component("position", "rope")(TINY, causal=True)
    q = torch.randn(1, 4, TINY.max_len + 1, TINY.head_dim)
    with pytest.raises(ValueError, match="max_len"):
        rope.rotate(q, q)
    with pytest.raises(UserError, match="even head dimension"):
        build(TINY.replace(position="rope", d_head=7), "decoder")
    assert "cos" not in rope.state_dict() and "sin" not in rope.state_dict()


def test_rope_adds_no_absolute_position() -> None:
    rope = component("position", "rope")(TINY, causal=False)
    x = torch.randn(2, 5, TINY.d_model)
    assert torch.equal(rope.embed(x), x) and rope.bias(5, 5, x.device, x.dtype) is None


# -- T5 relative bias ----------------------------------------------------------------------
def test_relative_buckets_match_t5_and_are_monotone() -> None:
    rel = torch.arange(-200, 201)
    bi = relative_position_bucket(rel, bidirectional=True, n_buckets=32, max_distance=128)
    uni = relative_position_bucket(rel, bidirectional=False, n_buckets=32, max_distance=128)

    def at(buckets: Tensor, offset: int) -> int:
        return int(buckets[offset + 200])

    # exact below n/2 of each half, then log-spaced up to max_distance, then the last bucket
    assert [at(bi, -d) for d in (0, 1, 7, 8, 16, 64, 128, 200)] == [0, 1, 7, 8, 10, 14, 15, 15]
    assert [at(bi, d) for d in (1, 7, 8, 16, 200)] == [17, 23, 24, 26, 31]
    assert [at(uni, -d) for d in (0, 15, 16, 32, 128, 200)] == [0, 15, 16, 21, 31, 31]
    assert all(at(uni, d) == 0 for d in range(0, 50))                  # causal: future keys share bucket 0
    before, after = bi[:200].flip(0), bi[201:]                          # distance 1, 2, ... on each side
    assert (before.diff() >= 0).all() and (after.diff() >= 0).all() and (uni[:201].flip(0).diff() >= 0).all()
    assert set(before.tolist()).isdisjoint(after.tolist())
    assert int(bi.max()) == 31 and int(uni.max()) == 31


def test_relative_bias_one_table_per_stack_shared_by_layers() -> None:
    spec = spec_for("relative_bias")
    model = build(spec, "encoder_decoder")
    tables = [n for n, _ in model.named_parameters() if "position" in n]
    assert tables == ["encoder.position.table", "decoder.position.table"]
    assert model.encoder.position.table.shape == (spec.rel_buckets, spec.n_heads)
    extra = count_params(model) - count_params(build(spec_for("no_position"), "encoder_decoder"))
    assert extra == 2 * spec.rel_buckets * spec.n_heads                  # not one per layer
    enc, dec = model.encoder.position, model.decoder.position
    assert not enc.causal and dec.causal
    bias = dec.bias(6, 6, torch.device("cpu"), torch.float32)
    assert bias.shape == (spec.n_heads, 6, 6)
    torch.testing.assert_close(bias[:, 0, 3], dec.table[0])              # future offsets: bucket 0
    torch.testing.assert_close(bias[:, 4, 1], dec.table[3])              # 3 back: exact bucket 3
    torch.testing.assert_close(enc.bias(6, 6, torch.device("cpu"), torch.float32)[:, 1, 4],
                               enc.table[spec.rel_buckets // 2 + 3])     # 3 ahead: second half
    x = torch.randn(1, 6, spec.d_model)
    assert torch.equal(enc.embed(x), x)                                  # no absolute position (T5)


def test_relative_bias_variant_parameters_and_bad_buckets() -> None:
    spec = spec_for("relative_bias(buckets=8,max_distance=20)")
    assert (spec.position, spec.rel_buckets, spec.rel_max_distance) == ("relative_bias", 8, 20)
    with pytest.raises(UserError, match="rel_buckets"):
        build(spec.replace(rel_buckets=2), "encoder")
    with pytest.raises(UserError, match="rel_max_distance"):
        build(spec.replace(rel_max_distance=2), "encoder")


# -- ALiBi ---------------------------------------------------------------------------------
def test_alibi_slopes_are_geometric() -> None:
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    s16 = torch.tensor(alibi_slopes(16))
    torch.testing.assert_close(s16[1:] / s16[:-1], torch.full((15,), 2 ** -0.5))
    assert alibi_slopes(4) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]
    # not a power of two: the 4-head slopes, then every other slope of the 8-head sequence
    assert alibi_slopes(6) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]


def test_alibi_bias_is_minus_slope_times_distance() -> None:
    for causal in (False, True):
        alibi = component("position", "alibi")(TINY.replace(n_heads=8, d_model=64), causal=causal)
        bias = alibi.bias(5, 5, torch.device("cpu"), torch.float32)
        i, j = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
        expected = -torch.tensor(alibi_slopes(8))[:, None, None] * (i - j).abs()
        torch.testing.assert_close(bias, expected)
        assert not list(alibi.parameters())


# -- linear attention ----------------------------------------------------------------------
def quadratic_linear_attention(q: Tensor, k: Tensor, v: Tensor, q_num: Tensor, k_num: Tensor,
                               causal: bool) -> Tensor:
    """The explicit O(T^2) form: weights phi(q_i).phi(k_j), masked, normalised by their sum."""
    num, den = q_num @ k_num.transpose(-1, -2), q @ k.transpose(-1, -2)
    if causal:
        future = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).triu(1)
        num, den = num.masked_fill(future, 0.0), den.masked_fill(future, 0.0)
    return (num @ v) / (den.sum(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("rotated", [False, True])
def test_linear_attention_prefix_sums_equal_quadratic_form(rotated: bool) -> None:
    torch.manual_seed(1)
    q, k = elu_feature_map(torch.randn(2, 3, 37, 8)), elu_feature_map(torch.randn(2, 3, 37, 8))
    v = torch.randn(2, 3, 37, 5)
    qn, kn = (q, k) if not rotated else (q.flip(-1) * 0.5, k.roll(1, dims=-1) - 0.3)
    for chunk in (5, 16, 64):
        torch.testing.assert_close(causal_linear_attention(q, k, v, qn, kn, chunk=chunk),
                                   quadratic_linear_attention(q, k, v, qn, kn, causal=True), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(linear_attention(q, k, v, qn, kn),
                               quadratic_linear_attention(q, k, v, qn, kn, causal=False), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_module_matches_explicit_computation(causal: bool) -> None:
    torch.manual_seed(2)
    spec = TINY.replace(attention="linear", position="rope")
    attn = LinearAttention(spec, causal=causal)
    rope = component("position", "rope")(spec, causal=causal)
    x = torch.randn(2, 9, spec.d_model)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    q, k, v = attn.project(x, None)
    q, k = elu_feature_map(q), elu_feature_map(k)
    keep = (~pad)[:, None, :, None].float()
    k, v = k * keep, v * keep
    qn, kn = rope.rotate(q, k)
    heads = quadratic_linear_attention(q, k, v, qn, kn, causal=causal)
    expected = attn.out(heads.transpose(1, 2).reshape(2, 9, spec.d_model))
    torch.testing.assert_close(attn(x, pad_mask=pad, position=rope), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("position", ["relative_bias", "alibi"])
def test_linear_attention_rejects_additive_bias_at_build(position: str) -> None:
    spec = TINY.replace(attention="linear", position=position)
    with pytest.raises(UserError, match=f"linear.*{position}"):
        build(spec, "decoder")
    build(spec.replace(position="rope"), "encoder_decoder")    # rope is fine


# -- unscaled and multi-query attention ---------------------------------------------------
def test_unscaled_attention_folds_the_scale_into_the_query_init() -> None:
    torch.manual_seed(3)
    spec = TINY.replace(d_model=64, n_heads=4)
    for variant, k_std in (("unscaled_attention", 1 / math.sqrt(3 * 64)),
                           ("unscaled_attention+init_xavier_uniform", math.sqrt(2 / (64 + 64)))):
        model = build(spec_for(variant, spec), "decoder")
        attn = model.decoder.blocks[0].attn.sublayer
        w_q, w_k = attn.branch_weights()["score"]
        assert w_q.std().item() == pytest.approx((64 * 16) ** -0.5, rel=0.1)   # re-applied after a scheme
        assert w_k.std().item() == pytest.approx(k_std, rel=0.15)              # k keeps the scheme
    scaled = MultiHeadAttention(spec, causal=True)
    unscaled = component("attention", "unscaled")(spec, causal=True)
    unscaled.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        unscaled.branch_weights()["score"][0].div_(math.sqrt(spec.head_dim))
    x = torch.randn(2, 7, 64)
    torch.testing.assert_close(unscaled(x), scaled(x), atol=1e-5, rtol=1e-4)   # no 1/sqrt(d_k) inside


def test_multi_query_shares_one_key_value_head() -> None:
    spec = TINY
    d, dh, h = spec.d_model, spec.head_dim, spec.n_heads
    saved_per_attention = 2 * (h - 1) * dh * d
    for topology, n_attn in (("decoder", 2), ("encoder_decoder", 6)):
        base, mqa = count_params(spec, topology), count_params(spec_for("multi_query"), topology)
        assert base - mqa == n_attn * saved_per_attention
    torch.manual_seed(4)
    mqa = component("attention", "multi_query")(spec, causal=True)
    mha = MultiHeadAttention(spec, causal=True)
    with torch.no_grad():                     # MHA whose K and V heads are copies of the MQA head
        wq, wk, wv = mqa.qkv.weight.split((h * dh, dh, dh))
        mha.qkv.weight.copy_(torch.cat([wq, wk.repeat(h, 1), wv.repeat(h, 1)]))
        mha.out.weight.copy_(mqa.out.weight)
    x = torch.randn(2, 6, d)
    torch.testing.assert_close(mqa(x), mha(x), atol=1e-5, rtol=1e-4)


# -- causality and padding, for every position x attention variant --------------------------
POSITIONS = ["sinusoidal", "learned", "no_position", "rope", "relative_bias", "alibi"]
ATTENTIONS = ["baseline", "unscaled_attention", "multi_query", "linear_attention"]
GRID = [f"{p}+{a}" if a != "baseline" else p for p in POSITIONS for a in ATTENTIONS
        if not (a == "linear_attention" and p in ("relative_bias", "alibi"))]
RESIDUALS = ["post_ln", "rezero", "rezero_layernorm", "fixup", "sandwich_ln", "deepnorm"]


def perturbed(model: nn.Module) -> nn.Module:
    """Move special-init scalars off their identity values, so every branch contributes."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ReZero):
                m.alpha.fill_(0.7)
            if isinstance(m, Fixup):
                for w in branch_weights(m.sublayer)["output"]:
                    w.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("variant", GRID + RESIDUALS)
def test_decoder_is_causal(variant: str) -> None:
    torch.manual_seed(5)
    model = perturbed(build(spec_for(variant), "decoder")).eval()
    x = torch.randint(0, VOCAB, (2, 20))
    t = 9
    y = x.clone()
    y[:, t + 1:] = torch.randint(0, VOCAB, (2, 20 - t - 1))
    with torch.no_grad():
        a, b = model.decode(x), model.decode(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("variant", GRID + RESIDUALS)
def test_encoder_ignores_padding(variant: str) -> None:
    torch.manual_seed(6)
    model = perturbed(build(spec_for(variant), "encoder")).eval()
    x = torch.randint(0, VOCAB, (2, 16))
    pad = torch.zeros(2, 16, dtype=torch.bool)
    pad[0, 11:] = True
    pad[1, 5:] = True
    y = torch.where(pad, torch.randint(0, VOCAB, (2, 16)), x)
    with torch.no_grad():
        a, b = model.encode(x, pad), model.encode(y, pad)
    torch.testing.assert_close(a[~pad], b[~pad], atol=1e-5, rtol=1e-4)


def test_encoder_decoder_cross_attention_for_rope_and_linear() -> None:
    torch.manual_seed(7)
    for variant in ("rope+linear_attention", "relative_bias+multi_query"):
        model = build(spec_for(variant), "encoder_decoder").eval()
        src, tgt = torch.randint(0, VOCAB, (2, 11)), torch.randint(0, VOCAB, (2, 7))
        src_pad = torch.zeros(2, 11, dtype=torch.bool)
        src_pad[1, 8:] = True
        other = torch.where(src_pad, (src + 1) % VOCAB, src)
        with torch.no_grad():
            a = model(src, tgt, src_pad)
            b = model(other, tgt, src_pad)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)   # padded source tokens are invisible


# -- residual schemes ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["rezero", "rezero+init_kaiming_normal"])
def test_rezero_is_the_identity_at_init(variant: str) -> None:
    spec = spec_for(variant, continuous(position="none"))
    model = build(spec, "encoder")
    assert not [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    x = torch.randn(2, 7, spec.d_model)
    torch.testing.assert_close(model.encoder(x), x)
    assert all(m.alpha.item() == 0.0 for m in model.modules() if isinstance(m, ReZero))
    ln = build(spec_for("rezero_layernorm", continuous()), "encoder")
    assert sum(isinstance(m, nn.LayerNorm) for m in ln.modules()) == 2 * 2 + 1   # per branch + final
    assert spec_for("rezero_rmsnorm").norm == "rmsnorm"


@pytest.mark.parametrize("variant", ["fixup", "fixup+init_xavier_normal"])
def test_fixup_zero_last_layers_and_rescaled_branches(variant: str) -> None:
    torch.manual_seed(8)
    spec = spec_for(variant, continuous(d_model=64, d_ff=256, n_layers=2, position="none"))
    model = build(spec, "encoder")
    assert not [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    blocks = [m for m in model.modules() if isinstance(m, Fixup)]
    assert len(blocks) == 4 and all(b.n_branches == 4 for b in blocks)
    scale = 4 ** -0.5                                                    # L^(-1/(2m-2)), L=4, m=2
    for b in blocks:
        for w in branch_weights(b.sublayer)["output"]:
            assert torch.count_nonzero(w) == 0
        assert (b.bias_in.item(), b.bias_mid.item(), b.bias_out.item(), b.scale.item()) == (0, 0, 0, 1)
    ffn_w1 = blocks[1].sublayer.w1.weight
    assert ffn_w1.std().item() == pytest.approx(scale / math.sqrt(3 * 64), rel=0.1)
    w_v = blocks[0].sublayer.branch_weights()["input"][0]
    assert w_v.abs().max().item() <= scale / math.sqrt(64) + 1e-6
    attn, ffn = blocks[0].sublayer, blocks[1].sublayer                   # b_mid only before the last layer
    assert len(attn.out._forward_pre_hooks) == 1 and not attn.qkv._forward_pre_hooks
    assert len(ffn.w2._forward_pre_hooks) == 1 and not ffn.w1._forward_pre_hooks
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(model.encoder(x), x)                     # identity at init
    with torch.no_grad():                                                # the mid bias reaches W_o's input
        blocks[0].sublayer.out.weight.fill_(0.01)
        before = model.encoder(x)
        blocks[0].bias_mid.fill_(1.0)
        after = model.encoder(x)
    assert not torch.allclose(before, after)
    blocks[1].reset_special()                                            # reset_special is idempotent
    blocks[1].reset_special()
    assert ffn_w1.std().item() == pytest.approx(scale / math.sqrt(3 * 64), rel=0.1)
    assert torch.count_nonzero(blocks[1].sublayer.w2.weight) == 0


def test_deepnorm_constants_per_topology() -> None:
    n = 6
    assert deepnorm_constants("encoder", "encoder", n, n) == pytest.approx(((2 * n) ** 0.25, (8 * n) ** -0.25))
    assert deepnorm_constants("decoder", "decoder", n, n) == pytest.approx(((2 * n) ** 0.25, (8 * n) ** -0.25))
    assert deepnorm_constants("encoder_decoder", "encoder", n, n) == pytest.approx(
        (0.81 * (n ** 5) ** (1 / 16), 0.87 * (n ** 5) ** (-1 / 16)))
    assert deepnorm_constants("encoder_decoder", "decoder", n, n) == pytest.approx(((3 * n) ** 0.25, (12 * n) ** -0.25))
    spec = spec_for("deepnorm", TINY.replace(n_layers=2, d_model=64, d_ff=256))
    for topology, stack, expected in (
        ("encoder", "encoder", deepnorm_constants("encoder", "encoder", 2, 2)),
        ("decoder", "decoder", deepnorm_constants("decoder", "decoder", 2, 2)),
        ("encoder_decoder", "encoder", (0.81 * 32 ** (1 / 16), 0.87 * 32 ** (-1 / 16))),
        ("encoder_decoder", "decoder", (6 ** 0.25, 24 ** -0.25)),
    ):
        model = build(spec, topology)
        blocks = [m for m in getattr(model, stack).modules() if isinstance(m, DeepNorm)]
        assert blocks and all((b.alpha, b.beta) == pytest.approx(expected) for b in blocks)
        assert not isinstance(getattr(model, stack).final_norm, nn.LayerNorm)
        w1 = next(b for b in blocks if hasattr(b.sublayer, "w1")).sublayer.w1.weight   # Xavier, gain beta
        assert w1.std().item() == pytest.approx(expected[1] * math.sqrt(2 / (64 + 256)), rel=0.1)
    x = torch.randn(1, 3, 64)
    block = blocks[0]
    block.sublayer = nn.Identity()
    out = block(x)
    torch.testing.assert_close(out, block.norm(block.alpha * x + x))      # LN(alpha x + F(x))


def test_sandwich_ln_closes_every_branch_with_a_norm() -> None:
    torch.manual_seed(11)
    model = build(spec_for("sandwich_ln", continuous()), "encoder")
    layernorms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layernorms) == 2 * 2 * 2 + 1                               # in+out per branch, final
    res, pre = model.encoder.blocks[0].ffn, build(continuous(), "encoder").encoder.blocks[0].ffn
    with torch.no_grad():
        res.sublayer.w2.weight.mul_(1000.0)
        pre.sublayer.w2.weight.mul_(1000.0)
    x = torch.randn(2, 5, TINY.d_model)
    delta = res(x) - x                                                     # what the branch adds
    torch.testing.assert_close(delta.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(delta.mean(-1), torch.zeros(2, 5), atol=1e-4, rtol=0)
    assert (pre(x) - x).std() > 10                                         # pre-LN's branch is unbounded


# -- initialisation schemes ------------------------------------------------------------------
FAN_IN, FAN_OUT = 64, 256


@pytest.mark.parametrize(("variant", "std"), [
    ("init_xavier_uniform", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("init_xavier_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("init_xavier_normal(gain=2.0)", 2 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("init_kaiming_uniform", math.sqrt(2 / FAN_IN)),
    ("init_kaiming_normal", math.sqrt(2 / FAN_IN)),
    ("init_normal", 0.02),
    ("init_normal(std=0.01)", 0.01),
    ("init_uniform", 0.05 / math.sqrt(3)),
    ("init_uniform(a=0.2)", 0.2 / math.sqrt(3)),
])
def test_init_schemes_empirical_std(variant: str, std: float) -> None:
    torch.manual_seed(9)
    spec = spec_for(variant, continuous(d_model=FAN_IN, d_ff=FAN_OUT, n_layers=1))
    model = build(spec, "encoder")
    ffn = model.encoder.blocks[0].ffn.sublayer
    assert ffn.w1.weight.std().item() == pytest.approx(std, rel=0.08)
    assert ffn.w2.weight.std().item() == pytest.approx(std if "xavier" in variant or "kaiming" not in variant
                                                       else math.sqrt(2 / FAN_OUT), rel=0.08)
    assert torch.count_nonzero(model.in_proj.bias) == 0
    w_q = model.encoder.blocks[0].attn.sublayer.branch_weights()["score"][0]     # fused QKV, part by part
    if "xavier" in variant:
        gain = 2.0 if "gain" in variant else 1.0
        assert w_q.std().item() == pytest.approx(gain * math.sqrt(2 / (2 * FAN_IN)), rel=0.1)


def test_init_normal_parses_sweeps_and_rejects_bad_scales() -> None:
    resolved = resolve("init_normal(std=0.01)", TINY)
    assert (resolved.spec.init, resolved.spec.init_scale) == ("normal", 0.01)
    assert resolve("init_normal", TINY).spec.init_scale == 0.02
    assert resolve("init_uniform(a=0.1)", TINY).spec.init_scale == 0.1
    for bad in ("init_normal(std=0)", "init_normal(std=-1.0)", "init_uniform(a='x')", "init_normal(sd=0.1)"):
        with pytest.raises(UserError):
            resolve(bad, TINY)
    model = build(resolved.spec, "decoder")
    emb = model.embedding.weight                                  # embeddings keep their own N(0, 1/d)
    assert emb.std().item() == pytest.approx(TINY.d_model ** -0.5, rel=0.15)


def test_schemes_keep_special_inits() -> None:
    torch.manual_seed(10)
    for variant in ("fixup+init_normal(std=0.05)", "rezero+init_uniform", "deepnorm+init_kaiming_normal"):
        model = build(spec_for(variant), "encoder_decoder")
        for m in model.modules():
            if isinstance(m, Fixup):
                assert all(torch.count_nonzero(w) == 0 for w in branch_weights(m.sublayer)["output"])
            if isinstance(m, ReZero):
                assert m.alpha.item() == 0.0
            if isinstance(m, DeepNorm) and hasattr(m.sublayer, "w1"):
                fan = TINY.d_model + TINY.d_ff
                assert m.sublayer.w1.weight.std().item() == pytest.approx(m.beta * math.sqrt(2 / fan), rel=0.2)


# -- parameter sharing -----------------------------------------------------------------------
def block_params(model: nn.Module, stack: str) -> int:
    return sum(p.numel() for p in getattr(model, stack).blocks[0].parameters())


@pytest.mark.parametrize(("variant", "topology", "shared"), [
    ("block_sharing", "decoder", ("decoder",)),
    ("block_sharing", "encoder", ("encoder",)),
    ("block_sharing", "encoder_decoder", ("encoder", "decoder")),
    ("encoder_block_sharing", "encoder_decoder", ("encoder",)),
    ("decoder_block_sharing", "encoder_decoder", ("decoder",)),
])
def test_block_sharing_removes_all_but_one_block(variant: str, topology: str, shared: tuple[str, ...]) -> None:
    spec = TINY.replace(n_layers=3)
    base = build(spec, topology)
    model = build(spec_for(variant, spec), topology)
    expected = sum((spec.n_layers - 1) * block_params(base, s) for s in shared)
    assert count_params(base) - count_params(model) == expected
    for s in shared:
        assert len(getattr(model, s).blocks) == 1 and getattr(model, s).repeat == 3


def test_variant_declarations() -> None:
    meta = {n: VARIANTS.entry(n).meta for n in ("encoder_block_sharing", "decoder_block_sharing", "block_sharing")}
    assert meta["encoder_block_sharing"]["requires"] == {"encoder_decoder"}
    assert meta["decoder_block_sharing"]["requires"] == {"encoder_decoder"}
    assert not meta["block_sharing"]["requires"]
    for name in ("rope", "relative_bias", "alibi", "unscaled_attention", "linear_attention", "multi_query", "rezero",
                 "rezero_layernorm", "rezero_rmsnorm", "fixup", "sandwich_ln", "deepnorm", "init_xavier_uniform",
                 "init_xavier_normal", "init_kaiming_uniform", "init_kaiming_normal", "init_normal", "init_uniform"):
        assert VARIANTS.entry(name).meta["slot"] in ("position", "attention", "residual", "init")
    assert spec_for("rezero").norm == "none" and spec_for("fixup").norm == "none"
