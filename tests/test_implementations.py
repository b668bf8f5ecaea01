"""Implementation profiles: the ``torch`` profile against ``torch.nn`` itself, the others by
their defining properties, and the conflicts a plan skips variants for."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from modtransfer.builtins import load_builtins
from modtransfer.cli.listing import list_implementations
from modtransfer.core.components import COMPONENTS, register_component
from modtransfer.core.errors import UnknownNameError, UserError
from modtransfer.core.implementations import apply_implementation, implementation_conflict, resolve_on
from modtransfer.core.model import Transformer, build, count_params
from modtransfer.core.profiles import IMPLEMENTATIONS, PROFILE_FIELDS, register_implementation
from modtransfer.core.spec import LATE_FIELDS, ModelSpec
from modtransfer.core.validate import check_components
from modtransfer.core.variant import VARIANTS, register_variant, resolve
from modtransfer.variants.baseline.position import sinusoid_table
from modtransfer.variants.init import init_torch

load_builtins()

D, H, FF, L = 64, 4, 128, 2
SHAPE = ModelSpec(d_model=D, n_layers=L, n_heads=H, d_ff=FF, max_len=32)
BUILTIN = ("modtransfer", "torch", "t5", "gpt2")


def torch_spec(**io: int) -> ModelSpec:
    spec = apply_implementation("torch", SHAPE.replace(**(io or {"in_features": 8, "out_features": 3})))
    assert spec.dropout == 0.1 and spec.bias and spec.clone_layers and spec.residual == "post"
    return spec


# -- mapping our parameters onto torch.nn's ------------------------------------------------------
def _attention_map(ours: str, theirs: str, cross: bool) -> dict[str, list[str]]:
    inputs = [f"{ours}.q", f"{ours}.kv"] if cross else [f"{ours}.qkv"]
    return {
        f"{theirs}.in_proj_weight": [f"{i}.weight" for i in inputs],
        f"{theirs}.in_proj_bias": [f"{i}.bias" for i in inputs],
        f"{theirs}.out_proj.weight": [f"{ours}.out.weight"],
        f"{theirs}.out_proj.bias": [f"{ours}.out.bias"],
    }


def _layer_map(ours: str, theirs: str, decoder: bool) -> dict[str, list[str]]:
    """torch.nn layer parameter -> our parameters (concatenated along dim 0)."""
    m = _attention_map(f"{ours}.attn.sublayer", f"{theirs}.self_attn", cross=False)
    norms = ["attn", "cross", "ffn"] if decoder else ["attn", "ffn"]
    if decoder:
        m |= _attention_map(f"{ours}.cross.sublayer", f"{theirs}.multihead_attn", cross=True)
    for i, where in enumerate(norms, start=1):
        m[f"{theirs}.norm{i}.weight"] = [f"{ours}.{where}.norm.weight"]
        m[f"{theirs}.norm{i}.bias"] = [f"{ours}.{where}.norm.bias"]
    for i, w in ((1, "w1"), (2, "w2")):
        m[f"{theirs}.linear{i}.weight"] = [f"{ours}.ffn.sublayer.{w}.weight"]
        m[f"{theirs}.linear{i}.bias"] = [f"{ours}.ffn.sublayer.{w}.bias"]
    return m


def encoder_map() -> dict[str, list[str]]:
    m: dict[str, list[str]] = {}
    for i in range(L):
        m |= _layer_map(f"encoder.blocks.{i}", f"layers.{i}", decoder=False)
    return m


def transformer_map() -> dict[str, list[str]]:
    m: dict[str, list[str]] = {}
    for i in range(L):
        m |= _layer_map(f"encoder.blocks.{i}", f"encoder.layers.{i}", decoder=False)
        m |= _layer_map(f"decoder.blocks.{i}", f"decoder.layers.{i}", decoder=True)
    for stack in ("encoder", "decoder"):
        m[f"{stack}.norm.weight"] = [f"{stack}.final_norm.weight"]
        m[f"{stack}.norm.bias"] = [f"{stack}.final_norm.bias"]
    return m


def ours_as_theirs(model: nn.Module, mapping: dict[str, list[str]]) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {k: torch.cat([params[n].detach() for n in v], dim=0) for k, v in mapping.items()}


@torch.no_grad()
def copy_theirs_into_ours(ref: nn.Module, model: nn.Module, mapping: dict[str, list[str]]) -> None:
    params = dict(model.named_parameters())
    theirs = dict(ref.named_parameters())
    assert set(theirs) == set(mapping), set(theirs) ^ set(mapping)
    for name, targets in mapping.items():
        sizes = [params[t].shape[0] for t in targets]
        for t, part in zip(targets, theirs[name].split(sizes, dim=0), strict=True):
            params[t].copy_(part)


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def ref_encoder() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(D, H, FF, 0.1, batch_first=True)
    return nn.TransformerEncoder(layer, L, enable_nested_tensor=False)


def ref_transformer() -> nn.Transformer:
    return nn.Transformer(d_model=D, nhead=H, num_encoder_layers=L, num_decoder_layers=L, dim_feedforward=FF,
                          dropout=0.1, batch_first=True)


def _pad(batch: int, length: int, real: list[int]) -> Tensor:
    return torch.arange(length)[None, :] >= torch.tensor(real)[:, None]


# -- torch profile == torch.nn ----------------------------------------------------------------
def test_torch_encoder_equals_nn_transformer_encoder() -> None:
    torch.manual_seed(0)
    model, ref = build(torch_spec(), "encoder"), ref_encoder()
    assert n_params(model.encoder) == n_params(ref)
    assert isinstance(model.encoder.final_norm, nn.Identity)   # nn.TransformerEncoder without norm=
    copy_theirs_into_ours(ref, model, encoder_map())
    model.eval()
    ref.eval()
    x = torch.randn(3, 10, D)
    pad = _pad(3, 10, [10, 7, 4])
    table = sinusoid_table(10, D)
    with torch.no_grad():
        for mask in (None, pad):
            ours = model.encoder(x, mask)
            theirs = ref(x + table, src_key_padding_mask=mask)
            real = ~mask if mask is not None else torch.ones(3, 10, dtype=torch.bool)
            torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_torch_encoder_train_mode_draws_dropout_like_torch() -> None:
    """Same RNG state, same dropout masks: the layers consume random numbers in PyTorch's order.

    With batch size 1: nn.MultiheadAttention computes sequence-first internally, so its output
    (and the mask dropout1 draws for it) is laid out [T, B, E] in memory; only for B = 1 is that
    the same element order as our batch-first [B, T, E].
    """
    torch.manual_seed(0)
    model, ref = build(torch_spec(), "encoder"), ref_encoder()
    copy_theirs_into_ours(ref, model, encoder_map())
    model.train()
    ref.train()
    x = torch.randn(1, 9, D)
    torch.manual_seed(123)
    h = x
    for block in model.encoder.blocks:
        h = block(h, pad_mask=None, bias=None, position=model.encoder.position, memory=None, memory_pad_mask=None)
    torch.manual_seed(123)
    theirs = ref(x)
    torch.testing.assert_close(h, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(h, model.eval().encoder.blocks[1](model.encoder.blocks[0](
        x, pad_mask=None, bias=None, position=model.encoder.position, memory=None, memory_pad_mask=None),
        pad_mask=None, bias=None, position=model.encoder.position, memory=None, memory_pad_mask=None))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_torch_encoder_decoder_equals_nn_transformer() -> None:
    torch.manual_seed(0)
    model, ref = build(torch_spec(), "encoder_decoder"), ref_transformer()
    assert n_params(model.encoder, model.decoder) == n_params(ref.encoder, ref.decoder) == n_params(ref)
    copy_theirs_into_ours(ref, model, transformer_map())
    model.eval()
    ref.eval()
    src, tgt = torch.randn(3, 11, D), torch.randn(3, 7, D)
    src_pad = _pad(3, 11, [11, 8, 5])
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        ours = model.decoder(tgt, None, model.encoder(src, src_pad), src_pad)
        theirs = ref(src + sinusoid_table(11, D), tgt + sinusoid_table(7, D), tgt_mask=causal,
                     src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_torch_init_draws_exactly_what_torch_draws_and_clones_layers() -> None:
    spec = torch_spec()
    model = build(spec, "encoder")
    blocks = model.encoder.blocks
    for (name, a), (_, b) in zip(blocks[0].named_parameters(), blocks[1].named_parameters(), strict=True):
        assert torch.equal(a, b), f"{name}: layers are not clones at init"
    torch.manual_seed(7)
    ref = ref_encoder()
    torch.manual_seed(7)
    init_torch(model, spec)
    ours = ours_as_theirs(model, encoder_map())
    for name, p in ref.named_parameters():
        assert torch.equal(ours[name], p.detach()), name
    # the draws themselves: kaiming-uniform(a=sqrt(5)) Linear, fused xavier in_proj, zero attention biases
    assert ours["layers.0.self_attn.in_proj_bias"].abs().max() == 0 and ours["layers.0.self_attn.out_proj.bias"].abs().max() == 0
    bound = math.sqrt(6 / (D + 3 * D))
    assert ours["layers.0.self_attn.in_proj_weight"].abs().max() <= bound
    assert ours["layers.0.self_attn.in_proj_weight"].abs().max() > 0.9 * bound  # one [3d, d] matrix, not three [d, d]
    assert ours["layers.0.linear2.weight"].abs().max() <= 1 / math.sqrt(FF)
    assert ours["layers.0.linear1.bias"].abs().max() <= 1 / math.sqrt(D)


def test_torch_init_of_an_encoder_decoder_is_nn_transformers() -> None:
    """nn.Transformer re-draws every matrix xavier-uniform after cloning: matrices differ, biases are clones."""
    spec = torch_spec()
    model = build(spec, "encoder_decoder")
    torch.manual_seed(3)
    ref = ref_transformer()
    torch.manual_seed(3)
    init_torch(model, spec)
    ours = ours_as_theirs(model, transformer_map())
    for name, p in ref.named_parameters():
        assert torch.equal(ours[name], p.detach()), name
    enc = model.encoder.blocks
    assert not torch.equal(enc[0].ffn.sublayer.w1.weight, enc[1].ffn.sublayer.w1.weight)
    assert torch.equal(enc[0].ffn.sublayer.w1.bias, enc[1].ffn.sublayer.w1.bias)
    assert not isinstance(model.decoder.final_norm, nn.Identity)


def test_torch_decoder_lm_is_causal_and_trains() -> None:
    spec = apply_implementation("torch", SHAPE.replace(vocab_size=40))
    model = build(spec, "decoder").eval()
    x = torch.randint(0, 40, (2, 12))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 40
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6])
    model.train()
    model.token_nll(model(x), x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# -- the profiles' own defaults ---------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_profile_sources_every_default(name: str) -> None:
    entry = IMPLEMENTATIONS.entry(name)
    assert entry.meta["source"]
    missing = [f for f in PROFILE_FIELDS if not entry.meta["sources"].get(f)]
    assert not missing, f"{name}: no source for {missing}"
    spec = apply_implementation(name, SHAPE)
    assert spec.implementation == name


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("topology", ["decoder", "encoder", "encoder_decoder"])
def test_profiles_build_and_backprop(name: str, topology: str) -> None:
    spec = apply_implementation(name, SHAPE.replace(vocab_size=40))
    torch.manual_seed(0)
    model = build(spec, topology)
    x = torch.randint(0, 40, (2, 9))
    h = model(x, x[:, :5]) if topology == "encoder_decoder" else model(x)
    loss = model.token_nll(h, x[:, :5] if topology == "encoder_decoder" else x).mean()
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_modtransfer_profile_keeps_specs_digests_and_ids() -> None:
    spec = SHAPE.replace(vocab_size=40)
    # the profile only switches to per-module init draws (common random numbers), which changes
    # what a cell trains and so, on purpose, its spec digest and cell id
    assert apply_implementation("modtransfer", spec) == spec.replace(init_draws="per_module")
    assert apply_implementation("modtransfer", spec).to_dict() == {**spec.to_dict(), "init_draws": "per_module"}
    assert not set(LATE_FIELDS) & set(spec.to_dict())   # to_dict (and so every cell id) as before profiles
    assert ModelSpec().digest() == "8759051049e196a6"    # the digest before the new fields existed
    digests = {apply_implementation(n, spec).digest() for n in BUILTIN}
    assert len(digests) == len(BUILTIN)
    torch_spec_ = apply_implementation("torch", spec)
    assert ModelSpec.from_dict(torch_spec_.to_dict()) == torch_spec_


def test_t5_profile() -> None:
    spec = apply_implementation("t5", SHAPE.replace(vocab_size=40))
    model = build(spec, "encoder_decoder")
    assert not any(n.endswith("bias") for n, _ in model.named_parameters() if "position" not in n)
    assert type(model.encoder.final_norm).__name__ == "RMSNorm"
    tables = [n for n, _ in model.named_parameters() if n.endswith("position.table")]
    assert tables == ["encoder.position.table", "decoder.position.table"]   # one per stack, shared by its layers
    attn = model.encoder.blocks[0].attn.sublayer
    assert attn.scale == 1.0
    q, k, _ = attn.qkv.weight.detach().split(D, dim=0)
    assert q.std().item() == pytest.approx((D * D // H) ** -0.5, rel=0.1)
    assert k.std().item() == pytest.approx(D ** -0.5, rel=0.1)
    w2 = model.encoder.blocks[0].ffn.sublayer.w2.weight
    assert w2.std().item() == pytest.approx(FF ** -0.5, rel=0.1)
    assert model.embedding.weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert model.encoder.final_drop.p == 0.1 and model.encoder.blocks[0].ffn.sublayer.drop.p == 0.1
    h = torch.randn(2, 3, D)
    torch.testing.assert_close(model.embedding.to_output(h), h * D ** -0.5)


def test_gpt2_profile() -> None:
    spec = apply_implementation("gpt2", SHAPE.replace(vocab_size=40, n_layers=4))
    torch.manual_seed(0)
    model = build(spec, "decoder")
    block = model.decoder.blocks[0]
    assert block.attn.sublayer.qkv.bias is not None and block.ffn.sublayer.w1.bias is not None
    assert block.attn.sublayer.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.attn.sublayer.out.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert block.ffn.sublayer.w2.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert model.embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.ffn.sublayer.drop.p == 0.0 and block.ffn.drop.p == 0.1 and model.decoder.drop.p == 0.1
    x = torch.linspace(-3, 3, 7)
    act = block.ffn.sublayer.act
    torch.testing.assert_close(act(x), 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))))


def test_spec_fields_are_validated() -> None:
    assert ModelSpec(dropout_at="ffn, embed").dropout_at == "embed,ffn"
    with pytest.raises(UserError, match="unknown site 'everywhere'"):
        ModelSpec(dropout_at="everywhere")
    with pytest.raises(UserError, match="final_norm"):
        ModelSpec(final_norm="sometimes")
    with pytest.raises(UserError, match="true or false"):
        ModelSpec(bias=1)
    with pytest.raises(UnknownNameError, match="unknown implementation 'pytorch'"):
        check_components(SHAPE.replace(implementation="pytorch"))
    with pytest.raises(UnknownNameError, match="did you mean 'torch'"):
        apply_implementation("troch", SHAPE)
    with pytest.raises(UserError, match="built by implementation 't5'"):
        apply_implementation("torch", apply_implementation("t5", SHAPE))
    over = apply_implementation("torch", SHAPE, overrides={"dropout": 0.0})
    assert over.dropout == 0.0 and over.implementation == "torch"


def test_plugin_profile_needs_sources_and_no_sizes() -> None:
    @register_implementation("wide_test", source="a test")
    def wide(spec: ModelSpec) -> ModelSpec:
        return spec.replace(d_ff=spec.d_ff * 2)

    @register_implementation("unsourced_test", source="a test")
    def unsourced(spec: ModelSpec) -> ModelSpec:
        return spec.replace(activation="gelu")

    try:
        with pytest.raises(UserError, match="changes ModelSpec.d_ff"):
            apply_implementation("wide_test", SHAPE)
        with pytest.raises(UserError, match="sets ModelSpec.activation without a source"):
            apply_implementation("unsourced_test", SHAPE)
    finally:
        IMPLEMENTATIONS.unregister("wide_test")
        IMPLEMENTATIONS.unregister("unsourced_test")


# -- conflicts --------------------------------------------------------------------------------
def test_conflicts_are_reasons_and_user_errors_are_raised() -> None:
    size = SHAPE.replace(vocab_size=40)
    assert "residual='post' is already" in resolve_on("torch", "post_ln", size)[1]
    assert "clone_layers" in resolve_on("torch", "switch", size)[1]
    assert "relative_bias" in resolve_on("t5", "linear_attention", size)[1]
    assert "already" in resolve_on("t5", "rmsnorm", size)[1]
    assert resolve_on("gpt2", "learned", size)[1] is not None
    for impl in BUILTIN:
        rv, reason = resolve_on(impl, "swiglu", size)
        assert reason is None and rv is not None and rv.spec.implementation == impl and rv.spec.ffn == "glu"
        assert resolve_on(impl, "depth_x2", size)[1] is None
        assert resolve_on(impl, "baseline", size)[1] is None
    assert resolve_on("modtransfer", "sinusoidal", size)[1] is None      # as before profiles
    assert resolve_on("torch", "sinusoidal", size)[1] is None            # a no-op everywhere, not a conflict
    # without the profile's baseline: the variant sets only what the profile sets, to the same values
    torch_base = apply_implementation("torch", size)
    assert implementation_conflict("torch", resolve("post_ln", torch_base)) is not None
    assert implementation_conflict("torch", resolve("depth_x2", torch_base)) is None
    assert implementation_conflict("torch", "post_ln", base=size) is not None
    with pytest.raises(UnknownNameError):
        resolve_on("torch", "no_such_variant", size)
    with pytest.raises(UserError, match="both change"):
        resolve_on("torch", "gelu+swish", size)


def test_component_without_biases_conflicts_with_a_biased_profile() -> None:
    class PlainFFN(nn.Module):
        def __init__(self, spec: ModelSpec, activation: object, layer_index: int = 0) -> None:
            super().__init__()
            self.w = nn.Linear(spec.d_model, spec.d_model, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.w(x)

    register_component("ffn", "plain_test")(PlainFFN)

    @register_variant("plain_ffn_test", slot="ffn")
    def plain(spec: ModelSpec) -> ModelSpec:
        return spec.replace(ffn="plain_test")

    try:
        size = SHAPE.replace(vocab_size=40)
        assert resolve_on("modtransfer", "plain_ffn_test", size)[1] is None
        for impl in ("torch", "gpt2"):
            _, reason = resolve_on(impl, "plain_ffn_test", size)
            assert reason is not None and "no bias terms" in reason
        assert resolve_on("t5", "plain_ffn_test", size)[1] is None
    finally:
        VARIANTS.unregister("plain_ffn_test")
        COMPONENTS["ffn"].unregister("plain_test")


def test_every_variant_resolves_or_has_a_reason_on_every_profile() -> None:
    size = SHAPE.replace(vocab_size=40)
    for impl in BUILTIN:
        for name in VARIANTS.names():
            rv, reason = resolve_on(impl, name, size)
            assert (rv is not None and reason is None) or isinstance(reason, str), (impl, name)
            if reason is None:
                assert rv is not None
                with torch.device("meta"):
                    Transformer(rv.spec, "encoder_decoder" if "encoder_decoder" in rv.requires else "decoder")


def test_listing() -> None:
    text = list_implementations()
    for name in BUILTIN:
        assert name in text
    assert "torch/nn/modules/transformer.py" in text and "arXiv 1910.10683" in text
    md = list_implementations("t*", markdown=True)
    assert md.count("\n| t") == 2 and "| gpt2" not in md


def test_count_params_matches_topology_final_norms() -> None:
    spec = torch_spec(vocab_size=40)
    lone = count_params(spec, "decoder")
    assert lone == count_params(build(spec, "decoder"))
