"""The architecture rows of Narang et al. 2021's Table 1: parameter counts at the paper's shape and
each modification's defining property. (``check`` and the leak probes in evaluation and training
mode run for every variant in ``tests/test_contract.py``.)"""

from __future__ import annotations

import functools

import pytest
import torch

from modtransfer.builtins import load_builtins
from modtransfer.check.contract import run_contract
from modtransfer.core.errors import UserError
from modtransfer.core.layered import LayeredMemory
from modtransfer.core.model import build, count_params
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import resolve
from modtransfer.reports.reference import PAPER_NAMES, load_table
from modtransfer.variants.baseline.attention import MultiHeadAttention
from modtransfer.variants.branched import BranchedAttention, branched_params
from modtransfer.variants.convolution import convolution_params
from modtransfer.variants.evolved import evolved_params
from modtransfer.variants.memory import ProductKeyMemory, memory_params
from modtransfer.variants.stacks import FunnelStack, UniversalStack, timestep_signal
from modtransfer.variants.synthesizer import MODES, synthesizer_params
from modtransfer.variants.transparent import TransparentStack, transparent_params

load_builtins()

#: Narang et al.'s baseline: encoder-decoder, 12 + 12 layers, d_model 768, d_ff 3072, 12 heads,
#: 32k vocabulary (tied everywhere), inputs of 512 tokens: 223M parameters.
PAPER = ModelSpec(d_model=768, n_layers=12, n_heads=12, d_ff=3072, vocab_size=32128, max_len=512)
PKM = "product_key_memory(n_keys=512,heads=4,topk=32,d_key=512)"
TABLE1_ROWS = [f"synthesizer_{m}" for m in MODES] + [
    "lightweight_conv", "dynamic_conv", "universal_transformer", "funnel", "product_key_memory",
    "transparent_attention", "weighted_transformer", "evolved_transformer"]
#: rows whose count at the paper's shape is within 2% of Table 1
WITHIN_TABLE = ("lightweight_conv", "funnel", PKM, "transparent_attention", "weighted_transformer")
#: rows whose count differs from Table 1 by more than 2%, with the relative gap (ours / table - 1)
#: and why (module docstrings say more): the count is exact against the hand count below either way
KNOWN_GAPS = {
    "synthesizer_dense": -0.064,             # no unused W_k (the Mesh TF model kept it)
    "synthesizer_dense_plus": -0.079,        # the table's +20M is not explained by a [d_k, l] synthesiser
    "synthesizer_dense_plus_alpha": -0.079,
    "synthesizer_factorized": -0.037,        # no unused W_q, W_k
    "synthesizer_random": 0.064,             # R [H, 512, 512] per self-attention layer, no W_q, W_k
    "synthesizer_random_plus": 0.022,
    "synthesizer_random_plus_alpha": 0.022,
    "dynamic_conv": -0.106,                  # Wu et al.'s [d, H k] kernel predictor, k = 31
    "universal_transformer": -0.51,          # one shared block per stack; the table's 84M is not explained
    "evolved_transformer": -0.069,           # n_layers / 2 = 6 cells per stack; the table gives no cell count
}


@functools.cache
def _count(expr: str) -> int:
    return count_params(resolve(expr, PAPER).spec, "encoder_decoder")


def _table(expr: str) -> float:
    name = PAPER_NAMES[expr.split("(")[0]]
    return float(load_table()[name]["params"].rstrip("M")) * 1e6


def test_every_table1_architecture_row_is_mapped() -> None:
    for name in TABLE1_ROWS:
        assert name in PAPER_NAMES, name
    assert _count("baseline") == pytest.approx(223e6, rel=0.002)


@pytest.mark.parametrize("expr", WITHIN_TABLE)
def test_count_within_two_percent_of_table(expr: str) -> None:
    assert abs(_count(expr) / _table(expr) - 1) <= 0.02


@pytest.mark.parametrize("expr", sorted(KNOWN_GAPS))
def test_known_gap_to_table_is_as_documented(expr: str) -> None:
    assert _count(expr) / _table(expr) - 1 == pytest.approx(KNOWN_GAPS[expr], abs=0.005)


def test_counts_exact_against_hand_counts() -> None:
    d, ff, v, layers = PAPER.d_model, PAPER.d_ff, PAPER.vocab_size, PAPER.n_layers
    base = _count("baseline")
    attention = 4 * d * d
    self_layers = 2 * layers                     # encoder and decoder self-attention
    for mode in MODES:
        assert _count(f"synthesizer_{mode}") == base + self_layers * (synthesizer_params(PAPER, mode) - attention)
    for name, dynamic in (("lightweight_conv", False), ("dynamic_conv", True)):
        assert _count(name) == base + self_layers * (convolution_params(PAPER, dynamic) - attention)
    assert _count(PKM) == base - 2 * d * ff + memory_params(PAPER, 512, 4, 512)
    norm = 2 * d
    encoder_block, decoder_block = attention + 2 * d * ff + 2 * norm, 2 * attention + 2 * d * ff + 3 * norm
    halting = d + 1
    assert _count("universal_transformer") == v * d + encoder_block + decoder_block + 2 * norm + 2 * halting
    assert _count("funnel") == base


# -- defining properties ----------------------------------------------------------------------
def _small(**kw: object) -> ModelSpec:
    fields = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": 50, "max_len": 16, **kw}
    return ModelSpec(**fields)  # type: ignore[arg-type]


def _self_attention(expr: str, causal: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(resolve(expr, _small()).spec, "encoder_decoder")
    stack = model.decoder if causal else model.encoder
    return stack.blocks[0].attn.sublayer.eval()


@pytest.mark.parametrize("mode", list(MODES))
def test_synthesizer_weights_ignore_the_keys(mode: str) -> None:
    """dense: row i of the weights depends on x_i only; random/factorized: on nothing; plus: on the keys."""
    attn = _self_attention(f"synthesizer_{mode}")
    x = torch.randn(2, 10, 32)
    other = x.clone()
    other[:, 1:] = torch.randn(2, 9, 32)        # every key but the first changes
    a, b = attn.weights(x), attn.weights(other)
    kind, plus, _ = MODES[mode]
    if plus:
        assert not torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-4)
    elif kind == "dense":
        torch.testing.assert_close(a[:, :, 0], b[:, :, 0])
        assert not torch.allclose(a[:, :, 1], b[:, :, 1], atol=1e-4)  # row 1 follows its own query
    else:
        torch.testing.assert_close(a.expand_as(b), b)


@pytest.mark.parametrize("name", ["lightweight_conv", "dynamic_conv"])
def test_convolution_sees_exactly_its_window(name: str) -> None:
    """Causal: output i reads positions i-k+1..i; the kernel is softmax-normalised over its taps."""
    k = 5
    block = _self_attention(f"{name}(kernel={k})", causal=True)
    x = torch.randn(1, 12, 32)
    i = 9
    base = block(x)[0, i]
    for j, reads in ((i - k, False), (i - k + 1, True), (i, True), (i + 1, False)):
        changed = x.clone()
        changed[0, j] += 1.0
        moved = not torch.allclose(block(changed)[0, i], base, atol=1e-6)
        assert moved == reads, (name, j)
    torch.testing.assert_close(block.kernels(x).sum(-1), torch.ones(block.kernels(x).shape[:-1]))


def _universal() -> tuple[torch.nn.Module, UniversalStack]:
    torch.manual_seed(0)
    model = build(resolve("universal_transformer", _small(n_layers=3)).spec, "decoder").eval()
    assert isinstance(model.decoder, UniversalStack)
    return model, model.decoder


def test_universal_transformer_shares_one_block_and_halts() -> None:
    model, stack = _universal()
    assert len(stack.blocks) == 1 and stack.repeat == 3
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        stack.halt.bias.fill_(-30.0)             # p ~ 0: no position halts before the last step
        model.decode(tokens)
        assert float(model.decoder.aux_loss) == pytest.approx(3 + 1, abs=1e-3)  # N = 3 steps, R = 1
        stack.halt.bias.fill_(30.0)              # p ~ 1: every position halts at the first step
        h = model.decode(tokens)
        assert float(model.decoder.aux_loss) == pytest.approx(1 + 1, abs=1e-3)
        x = stack.position.embed(model.embedding.embed(tokens, "decoder"))
        x = x + timestep_signal(0, 32, x.device, x.dtype)
        one = stack.blocks[0](x, pad_mask=None, bias=None, position=stack.position, memory=None, memory_pad_mask=None)
        torch.testing.assert_close(h, stack.final_norm(one))


def test_funnel_pools_the_encoder_and_restores_it() -> None:
    torch.manual_seed(0)
    model = build(resolve("funnel", _small(n_layers=3)).spec, "encoder_decoder").eval()
    assert isinstance(model.encoder, FunnelStack) and model.encoder.pools and not model.decoder.pools
    seen: list[int] = []
    for block in model.encoder.blocks:
        block.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    x = torch.randint(0, 50, (2, 11))
    memory = model.encode(x)
    assert seen == [11, 6, 3] and memory.shape == (2, 11, 32)


def test_product_key_lookup_is_the_top_k_of_all_product_keys() -> None:
    torch.manual_seed(0)
    memory = ProductKeyMemory(_small(), n_keys=8, heads=2, topk=4, d_key=6)
    x = torch.randn(5, 32)
    scores, idx = memory.lookup(x)
    q = memory.query(x).unflatten(-1, (2, 2, 3))
    s1 = torch.einsum("bhd,hnd->bhn", q[:, :, 0], memory.subkeys[0])
    s2 = torch.einsum("bhd,hnd->bhn", q[:, :, 1], memory.subkeys[1])
    full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)        # all 64 product keys
    want, want_idx = full.topk(4, dim=-1)
    torch.testing.assert_close(scores, want)
    assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values)


def test_inapplicable_rows_say_why(empty_cache: object) -> None:
    (lm,) = run_contract("funnel", ["lm"], cache_dir=empty_cache)  # type: ignore[arg-type]
    assert lm.status == "skipped" and "encoder" in lm.detail
    (reg,) = run_contract("product_key_memory", ["regression"], cache_dir=empty_cache)  # type: ignore[arg-type]
    assert reg.status == "skipped" and "decoder" in reg.detail


# -- transparent attention, weighted transformer, evolved transformer (issue 26, the last three rows) ----
def test_last_three_counts_exact_against_hand_counts() -> None:
    d, v, layers = PAPER.d_model, PAPER.vocab_size, PAPER.n_layers
    norm = 2 * d
    assert _count("transparent_attention") == _count("baseline") + transparent_params(PAPER) == (
        _count("baseline") + 12 * 13)
    branched = branched_params(PAPER)
    assert branched == 4 * d * d + 12 * 2 * d * 256 + 2 * 12     # 12 branches of width 3072 / 12
    assert _count("weighted_transformer") == v * d + layers * (branched + norm) + layers * 2 * (branched + norm) + 2 * norm
    cells = resolve("evolved_transformer", PAPER).spec
    assert cells.n_layers == 6
    encoder, decoder = evolved_params(cells, False, False), evolved_params(cells, True, True)
    assert _count("evolved_transformer") == v * d + 6 * encoder + 6 * decoder + 2 * norm


def _seq2seq(expr: str, **kw: object) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build(resolve(expr, _small(**kw)).spec, "encoder_decoder").eval()
    return model, torch.randint(0, 50, (2, 9)), torch.randint(0, 50, (2, 6))


def _decode_with(model: torch.nn.Module, y: torch.Tensor, memories: list[torch.Tensor]) -> torch.Tensor:
    """The decoder stack run by hand, layer j reading the plain memory ``memories[j]``."""
    stack = model.decoder
    x = stack.position.embed(model.embedding.embed(y, "decoder"))
    for block, memory in zip(stack.blocks, memories, strict=True):
        x = block(x, pad_mask=None, bias=None, position=stack.position, memory=memory, memory_pad_mask=None)
    return stack.final_norm(x)


def test_transparent_decoder_reads_every_encoder_layer_through_its_own_softmax() -> None:
    model, x, y = _seq2seq("transparent_attention", n_layers=3)
    assert isinstance(model.decoder, TransparentStack)
    weights = model.decoder.weights()
    assert weights.shape == (3, 4)                  # one row per decoder layer, one column per encoder state
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    with torch.no_grad():
        memory = model.encode(x)
        assert isinstance(memory, LayeredMemory) and memory.layers.shape == (2, 9, 4, 32)
        torch.testing.assert_close(memory.layers[:, :, -1], memory.as_subclass(torch.Tensor))
        for picks in ((1, 1, 1), (3, 3, 3), (2, 0, 3)):   # decoder layer j: all its weight on state picks[j]
            model.decoder.mix.fill_(-30.0)
            for j, k in enumerate(picks):
                model.decoder.mix[j, k] = 30.0
            want = _decode_with(model, y, [memory.layers[:, :, k] for k in picks])
            torch.testing.assert_close(model.decode(y, None, memory), want)
        one, last = ([memory.layers[:, :, k]] * 3 for k in (1, 3))
        assert not torch.allclose(_decode_with(model, y, one), _decode_with(model, y, last), atol=1e-4)
    model.decoder.reset_special()
    model.decode(y, None, model.encode(x)).square().sum().backward()
    assert bool((model.decoder.mix.grad.abs().sum(-1) > 0).all())   # every decoder layer's row learns


def test_transparent_memory_keeps_its_layers_through_row_selection() -> None:
    model, x, y = _seq2seq("transparent_attention")
    with torch.no_grad():
        memory = model.encode(x)
        rows = torch.tensor([False, True])
        picked = memory[rows]                        # what greedy decoding does as rows finish
        assert isinstance(picked, LayeredMemory)
        torch.testing.assert_close(picked.layers, memory.layers[rows])
        torch.testing.assert_close(model.decode(y[rows], None, picked), model.decode(y, None, memory)[rows])
        with pytest.raises(ValueError, match="every encoder layer"):
            model.decode(y, None, memory + 0.0)      # any other operation drops the layers: said, not guessed


def test_weighted_transformer_branches_have_their_own_ffn_and_simplex_weights() -> None:
    model, x, _ = _seq2seq("weighted_transformer")
    block = model.encoder.blocks[0]
    assert not hasattr(block, "ffn") and model.decoder.blocks[0].cross is not None
    attn = block.attn.sublayer
    assert isinstance(attn, BranchedAttention) and len(attn.branches) == 4
    assert len({id(p) for b in attn.branches for p in b.parameters()}) == 4 * 2   # W1, W2 per branch
    with torch.no_grad():
        attn.kappa_logits.copy_(torch.randn(4))
        attn.alpha_logits.copy_(torch.randn(4))
        for w in (attn.kappa(), attn.alpha()):
            assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
        h = torch.randn(2, 9, 32)
        heads = attn.head_outputs(h)
        # the per-head projections W^{O_i} together are multi-head attention's W_o
        plain = MultiHeadAttention(_small(), False, False).eval()
        plain.load_state_dict({k: v for k, v in attn.state_dict().items() if k.startswith(("qkv", "out"))})
        torch.testing.assert_close(heads.sum(1), plain(h))
        kappa, alpha = attn.kappa(), attn.alpha()
        want = sum(alpha[i] * attn.branches[i](kappa[i] * heads[:, i]) for i in range(4))
        torch.testing.assert_close(attn(h), want)
        attn.alpha_logits.copy_(torch.tensor([30.0, -30.0, -30.0, -30.0]))   # all weight on branch 0
        torch.testing.assert_close(attn(h), attn.branches[0](attn.kappa()[0] * heads[:, 0]), atol=1e-5, rtol=1e-5)


def _reads(fn: object, x: torch.Tensor, i: int, j: int) -> bool:
    changed = x.clone()
    changed[0, j] += 1.0
    return not torch.allclose(fn(changed)[0, i], fn(x)[0, i], atol=1e-6)  # type: ignore[operator]


def test_evolved_cells_have_the_papers_branches() -> None:
    model, _, _ = _seq2seq("evolved_transformer", n_layers=2)
    enc, dec = model.encoder.blocks[0], model.decoder.blocks[0]
    assert len(model.encoder.blocks) == 1 and enc.names == ["glu", "conv", "attn", "ffn"]
    assert dec.names == ["branches", "conv", "attn", "cross", "ffn"]
    lm = build(resolve("evolved_transformer", _small()).spec, "decoder")
    assert lm.decoder.blocks[0].names == ["branches", "conv", "attn", "ffn"]
    d = 32
    conv = enc.parts["conv"].sublayer
    assert (conv.left.out_features, conv.right.dense.kernel_size, conv.right.dense.out_channels) == (4 * d, (3,), d // 2)
    assert (conv.out.depthwise.kernel_size, conv.out.pointwise.out_features) == ((9,), d // 2)
    dconv = dec.parts["conv"].sublayer
    assert (dconv.left.depthwise.kernel_size, dconv.left.pointwise.out_features) == ((11,), 2 * d)
    assert (dconv.right.depthwise.kernel_size, dconv.right.pointwise.out_features) == ((7,), d // 2)
    assert (dconv.out.depthwise.kernel_size, dconv.out.pointwise.out_features) == ((7,), d)
    branches = dec.parts["branches"].sublayer
    assert branches.left.n_heads == 8 and branches.right.n_heads == 4 and dec.parts["attn"].sublayer.n_heads == 4
    with torch.no_grad():
        h, m = torch.randn(2, 20, d), torch.randn(2, 5, d)
        torch.testing.assert_close(branches(h, memory=m), branches.left(h) + branches.right(h, kv=m))
        a, g = enc.parts["glu"].sublayer.proj(h).chunk(2, -1)
        torch.testing.assert_close(enc.parts["glu"].sublayer(h), a * torch.sigmoid(g))
        # receptive fields: encoder conv3 then sepconv9 (centred): i-5..i+5; decoder sepconv11/7 then 7: i-16..i
        for j, reads in ((3, False), (4, True), (14, True), (15, False)):
            assert _reads(conv, h, 9, j) == reads, j
        for j, reads in ((2, False), (3, True), (19, True)):
            assert _reads(dconv, h, 19, j) == reads, j
        assert not _reads(dconv, h, 10, 11)
        assert float(conv(h)[..., d // 2:].abs().max()) == 0.0   # the d/2-wide output, zero-padded to d


def test_last_rows_that_cannot_apply_say_why(empty_cache: object) -> None:
    for task in ("lm", "regression"):
        (res,) = run_contract("transparent_attention", [task], cache_dir=empty_cache)  # type: ignore[arg-type]
        assert res.status == "skipped" and "encoder_decoder" in res.detail
    with pytest.raises(UserError, match="evolved_transformer"):
        build(resolve("evolved_transformer+rope", _small()).spec, "decoder")
