"""Today's modifications (issue 26, part 2): each one's defining property and its exact parameter count.

Tiny models (d_model 32, 2-4 layers); counts are the variant's minus the baseline's, against a hand
count of what the variant adds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modtransfer.check.contract import failures, run_contract
from modtransfer.core.errors import UserError
from modtransfer.core.model import build, count_params
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import resolve
from modtransfer.variants.modern_attention import SlidingWindowAttention, outside_window, window_at
from modtransfer.variants.modern_blocks import residual_branches
from modtransfer.variants.modern_output import future_targets
from modtransfer.variants.residual import output_layers

pytestmark = pytest.mark.usefixtures("one_thread")

V, D, H, L = 37, 32, 4, 2
TINY = ModelSpec(d_model=D, n_layers=L, n_heads=H, d_ff=64, vocab_size=V, max_len=32)
DH = D // H


def spec_for(variant: str, base: ModelSpec = TINY) -> ModelSpec:
    return resolve(variant, base).spec


def added(variant: str, topology: str = "decoder", base: ModelSpec = TINY) -> int:
    return count_params(spec_for(variant, base), topology) - count_params(base, topology)


def tokens(seed: int = 0, b: int = 2, t: int = 16) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def decode(variant: str, x: torch.Tensor, seed: int = 0, base: ModelSpec = TINY, train: bool = False) -> torch.Tensor:
    model = build(spec_for(variant, base), "decoder", seed=seed).train(train)
    with torch.no_grad():
        return model.decode(x)


# -- counts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "topology", "hand"), [
    ("relu_squared", "decoder", 0),
    ("attention_softcap", "decoder", 0),
    ("sliding_window", "decoder", 0),
    ("partial_rope", "decoder", 0),
    ("output_softcap", "decoder", 0),
    ("z_loss", "decoder", 0),
    ("zero_init", "decoder", 0),
    ("qk_norm", "decoder", L * 2 * DH),                        # g_q, g_k per attention
    ("qk_norm", "encoder_decoder", 3 * L * 2 * DH),            # encoder self, decoder self and cross
    ("multi_token", "decoder", D * D),                         # one extra d x d head (n = 2)
    ("multi_token(heads=4)", "decoder", 3 * D * D),
    ("token_shift", "decoder", 2 * L * D),                     # mu per branch
    ("token_shift", "encoder_decoder", (2 * L + 3 * L) * D),
    ("value_residual", "decoder", 2 * (L - 1)),                # l1, l2 after the first layer
    ("value_residual", "encoder_decoder", 2 * 2 * (L - 1)),    # per stack; cross-attention untouched
    ("value_embeddings", "decoder", V * D + 2 * L),            # one table per stack, l1, l2 per layer
    ("value_embeddings", "encoder_decoder", 2 * (V * D + 2 * L)),
    ("unet_skips", "decoder", L // 2),                         # one weight per receiving block
])
def test_parameter_counts_are_exact(variant: str, topology: str, hand: int) -> None:
    assert added(variant, topology) == hand


def test_unet_count_at_depth_five() -> None:
    base = TINY.replace(n_layers=5)
    assert added("unet_skips", "decoder", base) == 2                # blocks 3 and 4 receive; block 2 is the middle
    assert added("value_residual", "decoder", base) == 2 * 4


# -- ReLU^2 ---------------------------------------------------------------------------------------
def test_relu_squared_is_the_square_of_relu() -> None:
    from modtransfer.core.components import component

    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(component("activation", "relu_squared")(x), F.relu(x) ** 2)


# -- QK-norm ----------------------------------------------------------------------------------------
def test_qk_norm_output_ignores_the_scale_of_wq_and_wk() -> None:
    model = build(spec_for("qk_norm"), "decoder", seed=0).eval()
    x = tokens()
    with torch.no_grad():
        before = model.decode(x)
        for block in model.decoder.blocks:
            w = block.attn.sublayer.qkv.weight
            w[: 2 * D].mul_(25.0)                                   # rows of W_q and W_k
        after = model.decode(x)
        torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-4)
        baseline = build(TINY, "decoder", seed=0).eval()
        base_before = baseline.decode(x)
        for block in baseline.decoder.blocks:
            block.attn.sublayer.qkv.weight[: 2 * D].mul_(25.0)
        assert (baseline.decode(x) - base_before).abs().max() > 1e-2  # the baseline's does not


# -- soft-capping -----------------------------------------------------------------------------------
def test_attention_softcap_bounds_the_logits_and_is_near_identity_below_the_cap() -> None:
    from modtransfer.core.components import component

    attn = component("attention", "softcap")(spec_for("attention_softcap(cap=5.0)"), True, False)
    q, k = torch.randn(1, H, 6, DH) * 40, torch.randn(1, H, 6, DH) * 40
    s = attn.scores(q, k)
    assert s.abs().max() <= 5.0 and s.abs().max() > 4.9
    wide = component("attention", "softcap")(spec_for("attention_softcap(cap=1.0e6)"), True, False)
    q, k = torch.randn(1, H, 6, DH), torch.randn(1, H, 6, DH)
    torch.testing.assert_close(wide.scores(q, k), q @ k.transpose(-1, -2) / math.sqrt(DH), atol=1e-5, rtol=1e-5)


def test_output_softcap_bounds_logits_and_normalises() -> None:
    model = build(spec_for("output_softcap(cap=2.0)"), "decoder", seed=0).eval()
    h = torch.randn(2, 5, D) * 100
    logits = model.output.logits(h, model.embedding.output_weight())
    assert logits.abs().max() <= 2.0
    lp = model.log_probs(h)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    # with uniform-ish logits in [-2, 2] no token can get more than e^4 / (e^4 + (V - 1) e^-4) of the mass
    assert lp.exp().max() <= math.exp(4) / (math.exp(4) + (V - 1) * math.exp(-4)) + 1e-6


# -- sliding window ---------------------------------------------------------------------------------
def test_window_schedule_warms_up_linearly() -> None:
    assert [window_at(s, 16, 4, 8) for s in (0, 2, 4, 8, 100)] == [4, 7, 10, 16, 16]
    assert window_at(0, 16, 4, 0) == 16
    # keys 2 or more back are outside (later keys are the causal mask's); bidirectional: either side
    assert outside_window(4, 4, 2, True).int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert outside_window(3, 3, 2, False).int().tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_sliding_window_limits_the_receptive_field_and_grows_in_training() -> None:
    base = TINY.replace(n_layers=1, position="none")
    model = build(spec_for("sliding_window(window=6,start=2,warmup=4)", base), "decoder", seed=0)
    attn = model.decoder.blocks[0].attn.sublayer
    assert isinstance(attn, SlidingWindowAttention) and attn.current_window == 2
    x = tokens(t=16)
    changed = x.clone()
    changed[:, 3] = (changed[:, 3] + 1) % V
    for steps, window in ((0, 2), (2, 4), (4, 6)):
        attn.steps_seen = steps
        model.eval()
        with torch.no_grad():
            diff = (model.decode(x) - model.decode(changed)).abs().amax(dim=(0, 2))
        reached = diff > 1e-6
        # position 3 reaches positions 3 .. 3 + window - 1 in one layer, nothing else
        assert reached.nonzero().flatten().tolist() == list(range(3, 3 + window))
    model.train()
    attn.steps_seen = 0
    model.decode(x)                                   # one training step's forward
    assert attn.steps_seen == 1 and attn.current_window == 3
    model.eval()
    with torch.no_grad():
        model.decode(x)
    assert attn.steps_seen == 1                        # evaluation does not advance the schedule


def test_sliding_window_keeps_the_contract_with_a_small_window(empty_cache: object) -> None:
    results = run_contract("sliding_window(window=3,start=2,warmup=2)", ["lm", "mt"], use_data=False)
    assert not failures(results)
    assert {(r.task, r.check) for r in results if r.status == "passed"} >= {("lm", "causality"), ("mt", "causality"),
                                                                           ("mt", "padding")}


# -- partial RoPE -------------------------------------------------------------------------------------
def test_partial_rope_rotates_a_fraction_of_the_channels() -> None:
    from modtransfer.core.components import component

    spec = spec_for("partial_rope(fraction=0.25)", TINY.replace(d_head=16))
    rope = component("position", "partial_rope")(spec, True)
    assert rope.rotated == 4
    q = torch.randn(1, 1, 10, 16)
    rq, _ = rope.rotate(q, q)
    torch.testing.assert_close(rq[..., 4:], q[..., 4:])            # the rest carries no position
    assert not torch.allclose(rq[..., 1:, :4], q[..., 1:, :4])
    full = component("position", "partial_rope")(spec_for("partial_rope(fraction=1.0)", TINY.replace(d_head=16)), True)
    torch.testing.assert_close(full.rotate(q, q)[0], component("position", "rope")(TINY.replace(d_head=16), True)
                               .rotate(q, q)[0])


# -- z-loss -------------------------------------------------------------------------------------------
def test_z_loss_is_log_z_squared_weighted_1e_4_in_training_only() -> None:
    model = build(spec_for("z_loss"), "decoder", seed=0)
    x, y = tokens(1), tokens(2)
    y[0, -3:] = -100
    h = model.decode(x)
    nll = model.token_nll(h, y)
    logits = F.linear(h, model.embedding.weight)
    log_z = logits.logsumexp(-1)
    keep = y != -100
    torch.testing.assert_close(model.aux_loss(), 1e-4 * log_z[keep].square().mean())
    baseline = build(TINY, "decoder", seed=0)
    torch.testing.assert_close(nll, baseline.output.token_nll(h, y, model.embedding.weight))  # the task's loss unchanged
    model.eval()
    model.token_nll(h.detach(), y)
    assert float(model.aux_loss()) == 0.0


# -- multi-token prediction -------------------------------------------------------------------------
def test_future_targets_shift_by_the_extra_offset() -> None:
    y = torch.tensor([[1, 2, 3, 4]])
    assert future_targets(y, 1).tolist() == [[2, 3, 4, -100]]
    assert future_targets(y, 5).tolist() == [[-100] * 4]


def test_multi_token_heads_add_their_nll_of_later_tokens() -> None:
    model = build(spec_for("multi_token(heads=3)"), "decoder", seed=0)
    x, y = tokens(3), tokens(4)
    h = model.decode(x)
    nll = model.token_nll(h, y)
    w = model.embedding.weight
    hand = 0.0
    for k, head in enumerate(model.output.heads, start=1):
        logits = F.linear(head(h), w)[:, : y.shape[1] - k]
        hand = hand + F.cross_entropy(logits.reshape(-1, V), y[:, k:].reshape(-1))
    torch.testing.assert_close(model.aux_loss(), hand)
    baseline = build(TINY, "decoder", seed=0)
    torch.testing.assert_close(nll, baseline.output.token_nll(h, y, w))                # the next-token head is the baseline's
    loss = nll.mean() + model.aux_loss()
    loss.backward()
    assert all(head.weight.grad is not None and head.weight.grad.abs().sum() > 0 for head in model.output.heads)


def test_multi_token_applies_to_decoder_lm_only() -> None:
    r = resolve("multi_token", TINY)
    assert r.missing({"vocab", "decoder", "causal"}) is None
    assert r.missing({"vocab", "encoder_decoder", "causal", "padding"}) is not None
    assert r.missing({"encoder"}) is not None


# -- zero-init ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("base_init", ["default", "init_normal"])
def test_zero_init_zeroes_every_branch_output_so_the_trunk_starts_as_the_embedding(base_init: str) -> None:
    crn = TINY.replace(init_draws="per_module")       # each tensor's draws from (seed, its place)
    base = crn if base_init == "default" else spec_for(base_init, crn)
    spec = spec_for("zero_init", base)
    assert spec.option("zero_init_base") == base.init
    model = build(spec, "encoder_decoder", seed=0).eval()
    branches = residual_branches(model)
    assert len(branches) == 2 * L + 3 * L
    assert all(not layer.weight.detach().any() for sub in branches for layer in output_layers(sub))
    x = tokens()
    with torch.no_grad():
        h = model.encode(x)
        torch.testing.assert_close(h, model.encoder.final_norm(model.encoder.position.embed(model.embedding.embed(x,
                                   "encoder"))))
    # the other weights keep the base scheme's draws
    ref = build(base, "encoder_decoder", seed=0)
    torch.testing.assert_close(model.decoder.blocks[0].attn.sublayer.qkv.weight, ref.decoder.blocks[0].attn.sublayer.qkv.weight)


# -- token shift, value residual / embeddings, U-net: equal to the baseline at a neutral setting ---------
def _load_baseline_weights(variant: str, base: ModelSpec = TINY) -> tuple[torch.nn.Module, torch.nn.Module]:
    baseline = build(base, "decoder", seed=0).eval()
    model = build(spec_for(variant, base), "decoder", seed=1).eval()
    missing, unexpected = model.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected
    return baseline, model


def test_token_shift_is_the_baseline_at_mu_zero_and_reads_the_previous_position_at_mu_one() -> None:
    baseline, model = _load_baseline_weights("token_shift")
    x = tokens(5)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(x), baseline.decode(x))
        for name, p in model.named_parameters():
            if name.endswith(".mu"):
                p.fill_(1.0)
        changed = x.clone()
        changed[:, 4] = (changed[:, 4] + 1) % V
        diff = (model.decode(x) - model.decode(changed)).abs().amax(dim=(0, 2))
    assert diff[:4].max() == 0.0 and diff[4:].min() > 0                 # still causal


def test_value_residual_mixes_the_first_layers_values() -> None:
    base = TINY.replace(n_layers=3)
    baseline, model = _load_baseline_weights("value_residual", base)
    attns = [b.attn.sublayer for b in model.decoder.blocks]
    assert [a.layer for a in attns] == [0, 1, 2] and not hasattr(attns[0], "lambdas")
    x = tokens(6)
    with torch.no_grad():
        assert (model.decode(x) - baseline.decode(x)).abs().max() > 1e-4   # l = (0.5, 0.5) at init
        for a in attns[1:]:
            a.lambdas.copy_(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(model.decode(x), baseline.decode(x))
        for a in attns[1:]:
            a.lambdas.copy_(torch.tensor([0.0, 1.0]))
        model.decode(x)
        v1 = model.decoder.shared.scratch["v1"]
        _, _, v = attns[0].project(model.decoder.blocks[0].attn.norm(model.decoder.position.embed(
            model.embedding.embed(x, "decoder"))), None)
    torch.testing.assert_close(v1, v)
    attns[0].project(torch.randn(1, 16, D), None)                       # as diagnostics do, on part of a batch
    assert model.decoder.shared.scratch["v1"] is v1                      # project() leaves the shared state alone


def test_value_embeddings_add_a_token_table_to_every_layers_values() -> None:
    baseline, model = _load_baseline_weights("value_embeddings")
    attns = [b.attn.sublayer for b in model.decoder.blocks]
    assert hasattr(attns[0], "table") and not hasattr(attns[1], "table")
    x = tokens(7)
    with torch.no_grad():
        for a in attns:
            a.lambdas.copy_(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(model.decode(x), baseline.decode(x))
        for a in attns:
            a.lambdas.copy_(torch.tensor([0.5, 0.5]))
        before = model.decode(x)
        attns[0].table[x[0, 0]] += 1.0                                   # only the looked-up rows matter
        assert (model.decode(x) - before).abs().max() > 1e-4
    with pytest.raises(UserError, match="vocabulary"):
        build(TINY.replace(vocab_size=0, in_features=4, out_features=2, attention="value_embedding"), "encoder")


def test_unet_skips_join_mirror_blocks() -> None:
    base = TINY.replace(n_layers=4)
    baseline, model = _load_baseline_weights("unet_skips", base)
    residuals = [r for b in model.decoder.blocks for r in (b.attn, b.ffn)]
    assert [(r.leaves, r.takes) for r in residuals] == [(None, None), ("skip0", None), (None, None), ("skip1", None),
                                                        (None, "skip1"), (None, None), (None, "skip0"), (None, None)]
    x = tokens(8)
    with torch.no_grad():
        assert (model.decode(x) - baseline.decode(x)).abs().max() > 1e-4   # weights 1 at init
        for r in residuals:
            if r.takes:
                r.weight.zero_()
        torch.testing.assert_close(model.decode(x), baseline.decode(x))


@pytest.mark.parametrize("variant", ["value_residual", "unet_skips"])
def test_cross_layer_variants_refuse_a_shared_block(variant: str) -> None:
    with pytest.raises(UserError, match="distinct blocks"):
        build(spec_for(f"{variant}+block_sharing"), "decoder")
