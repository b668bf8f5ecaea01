"""Implementation profiles, the registry and the built-ins: named baselines, each a documented set of
defaults with a source for every default it sets.

Narang et al. 2021 ("Do Transformer Modifications Transfer Across Implementations and
Applications?", arXiv 2102.11972) found that most modifications did not survive the move to
another codebase. Here an *implementation* is a profile: a function ``spec -> spec`` that sets
the defaults a codebase fixes (norm placement, biases, init, positions, tying, dropout, layer
cloning) on a size preset's spec. ``ModelSpec.implementation`` records the profile, so cells of
different implementations have different ids.

Built-in profiles:

``modtransfer``  this harness's baseline (pre-LN, no biases, sinusoidal positions, tied and
                 sqrt(d)-scaled embeddings, PyTorch's default Linear init); the reference of the zoo.
``torch``        exactly ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` /
                 ``Transformer`` with their defaults; what they leave out (embeddings, positions,
                 output layer) as in PyTorch's own example (pytorch/examples word_language_model).
``t5``           the T5 / Mesh TensorFlow baseline of Raffel et al. 2020 and Narang et al. 2021.
``gpt2``         GPT-2 (Radford et al. 2019) as nanoGPT reproduces it.

Applying a profile and resolving variants on it: :mod:`modtransfer.core.implementations`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields

from modtransfer.core.registry import Registry
from modtransfer.core.spec import SLOTS, ModelSpec

Profile = Callable[[ModelSpec], ModelSpec]

IMPLEMENTATIONS: Registry[Profile] = Registry("implementation")

#: The implementation of a spec nobody chose one for (the zoo's reference baseline).
DEFAULT_IMPLEMENTATION = "modtransfer"

#: What a profile decides, each with a source: the slots plus the implementation fields.
PROFILE_FIELDS: tuple[str, ...] = (
    *SLOTS, "norm_eps", "final_norm", "bias", "dropout", "dropout_at", "clone_layers", "init_draws",
)

#: Sizes come from the size preset and the task, never from a profile.
SHAPE_FIELDS: frozenset[str] = frozenset({
    "d_model", "n_layers", "n_heads", "d_head", "d_ff", "vocab_size", "in_features", "out_features", "max_len",
})

_SPEC_FIELDS = frozenset(f.name for f in fields(ModelSpec))


def register_implementation(
    name: str, *, source: str, description: str | None = None, sources: Mapping[str, str] | None = None,
    override: bool = False,
) -> Callable[[Profile], Profile]:
    """Register ``fn(spec) -> spec`` as the implementation profile ``name``.

    ``source``: where the profile as a whole comes from (papers, code). ``sources``: one
    citation per ModelSpec field the profile decides (every field it changes needs one; the
    built-in profiles give one for every field of :data:`PROFILE_FIELDS`). ``description``
    defaults to the first line of the function's docstring. ``override=True`` replaces a
    profile of the same name on purpose.
    """
    cited = dict(sources or {})
    unknown = sorted(set(cited) - _SPEC_FIELDS)
    if unknown:
        raise ValueError(f"implementation {name!r}: sources name unknown ModelSpec field {unknown[0]!r}")
    if not source:
        raise ValueError(f"implementation {name!r} needs a source")

    def decorator(fn: Profile) -> Profile:
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        IMPLEMENTATIONS.register(name, fn, override=override, source=source, description=doc.strip(),
                                 sources=cited)
        return fn

    return decorator


# -- built-in profiles ------------------------------------------------------------------------
_VASWANI = "Vaswani et al. 2017, arXiv 1706.03762"
_T5 = "Raffel et al. 2020, arXiv 1910.10683"
_NARANG = "Narang et al. 2021, arXiv 2102.11972"
_GPT2 = "Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners'"
_TORCH = "torch/nn/modules/transformer.py"
_TORCH_EXAMPLE = "pytorch/examples word_language_model/model.py (TransformerModel, PositionalEncoding)"
_NANOGPT = "karpathy/nanoGPT model.py"
_CRN = ("per_module: common random numbers, each component drawn from (seed, its place in the model), so tensors "
        "a variant does not change start as the baseline's (this harness, modtransfer.core.draws)")


@register_implementation(
    "modtransfer",
    source="this harness's baseline (README, 'Concepts'); components as cited",
    sources={
        "activation": f"ReLU FFN ({_VASWANI}, eq. 2)",
        "ffn": f"dense two-layer FFN ({_VASWANI}, eq. 2)",
        "norm": "LayerNorm (Ba et al. 2016, arXiv 1607.06450)",
        "norm_eps": "1e-5, torch.nn.LayerNorm's default",
        "residual": "pre-LN (Xiong et al. 2020, arXiv 2002.04745)",
        "final_norm": "auto: pre-LN stacks end with a norm (Xiong et al. 2020; Radford et al. 2019)",
        "position": f"sinusoidal ({_VASWANI}, section 3.5)",
        "attention": f"scaled dot-product, fused QKV ({_VASWANI}, section 3.2)",
        "embedding": f"one tied matrix, inputs x sqrt(d) (Press & Wolf 2017, arXiv 1608.05859; {_VASWANI}, section 3.4)",
        "output": "full softmax",
        "sharing": "none",
        "init": "default: PyTorch's nn.Linear init, N(0, 1/d) embeddings (this harness)",
        "bias": f"no biases on projections, as the T5 baseline of {_NARANG}",
        "dropout": "0 (this harness: short budgets on small models)",
        "dropout_at": f"embeddings and residual branches ({_VASWANI}, section 5.4), attention weights and "
                      f"FFN ({_T5}, section 2.1)",
        "clone_layers": "no: every layer initialised independently (this harness)",
        "init_draws": _CRN,
    },
)
def modtransfer_profile(spec: ModelSpec) -> ModelSpec:
    """This harness's baseline: pre-LN, no biases, sinusoidal positions, tied sqrt(d)-scaled embeddings."""
    return spec.replace(init_draws="per_module")


@register_implementation(
    "torch",
    source=f"torch.nn.TransformerEncoderLayer / TransformerDecoderLayer / Transformer defaults ({_TORCH}); "
           f"embeddings, positions and output as in {_TORCH_EXAMPLE}",
    sources={
        "residual": f"post-LN: norm_first=False, x = norm(x + sublayer(x)) ({_TORCH})",
        "final_norm": f"encoder_decoder: nn.Transformer gives both stacks a final LayerNorm (encoder_norm, "
                      f"decoder_norm); nn.TransformerEncoder/Decoder have none unless norm= is given ({_TORCH})",
        "activation": f"activation=F.relu ({_TORCH})",
        "ffn": f"linear1 -> activation -> dropout -> linear2 ({_TORCH})",
        "norm": f"nn.LayerNorm with bias ({_TORCH})",
        "norm_eps": f"layer_norm_eps=1e-5 ({_TORCH})",
        "bias": f"bias=True: in_proj_bias, out_proj.bias, linear1/linear2 biases, LayerNorm biases ({_TORCH})",
        "attention": "nn.MultiheadAttention: softmax(QK^T/sqrt(d_k))V, fused in_proj (torch/nn/modules/activation.py)",
        "dropout": f"dropout=0.1 ({_TORCH})",
        "dropout_at": f"attention weights (MultiheadAttention dropout), dropout1/2/3 on each branch before the "
                      f"add, dropout inside the FFN ({_TORCH}); on the embeddings, PositionalEncoding's dropout "
                      f"({_TORCH_EXAMPLE})",
        "clone_layers": f"_get_clones: copy.deepcopy of the one layer given, so all layers start identical ({_TORCH})",
        "init": f"each module's own reset_parameters, MultiheadAttention._reset_parameters, nn.Transformer."
                f"_reset_parameters in an encoder-decoder ({_TORCH}; torch/nn/modules/activation.py, linear.py)",
        "position": f"sinusoidal PositionalEncoding ({_TORCH_EXAMPLE})",
        "embedding": f"untied: nn.Embedding input, separate nn.Linear output ({_TORCH_EXAMPLE}); the tables' init "
                     "is this harness's N(0, 1/d) x sqrt(d), not the example's U(-0.1, 0.1)",
        "output": f"full softmax (log_softmax of the output layer, {_TORCH_EXAMPLE})",
        "sharing": f"none: num_layers separate (cloned) layers ({_TORCH})",
        "init_draws": f"global: one generator stream in construction order, so for the same generator state the "
                      f"layers draw exactly what torch.nn's do ({_TORCH}; tests/test_implementations.py)",
    },
)
def torch_profile(spec: ModelSpec) -> ModelSpec:
    """torch.nn.Transformer* defaults: post-LN, ReLU, biases, dropout 0.1, PyTorch init, cloned layers."""
    return spec.replace(
        residual="post", final_norm="encoder_decoder", activation="relu", ffn="dense", norm="layernorm",
        norm_eps=1e-5, bias=True, attention="sdpa", dropout=0.1, dropout_at="embed,attention,residual,ffn",
        clone_layers=True, init="torch", position="sinusoidal", embedding="untied", output="softmax", sharing="none",
        init_draws="global",
    )


@register_implementation(
    "t5",
    source=f"T5 / Mesh TensorFlow ({_T5}), the baseline of {_NARANG}",
    sources={
        "residual": f"pre-norm: 'layer normalization is applied to the input of each subcomponent' ({_T5}, section 2.1)",
        "final_norm": f"auto (pre-norm): 'a final layer normalization is applied to the output of the final block' "
                      f"({_T5}, section 2.1)",
        "norm": f"'a simplified version of layer normalization where the activations are only rescaled and no "
                f"additive bias is applied' ({_T5}, section 2.1) = RMSNorm (Zhang & Sennrich 2019)",
        "norm_eps": "1e-6: T5's layer_norm_epsilon (Mesh TF T5 / Hugging Face T5Config)",
        "bias": "no biases in any dense layer or norm (Mesh TF T5; the Hugging Face port's nn.Linear(..., bias=False))",
        "position": f"relative position bias, 32 buckets up to offset 128, one table per stack shared by its "
                    f"layers ({_T5}, section 2.1)",
        "rel_buckets": f"32 ({_T5}, section 2.1)",
        "rel_max_distance": f"128 ({_T5}, section 2.1)",
        "attention": "unscaled logits q.k, the 1/sqrt(d_k) folded into W_q's init (Mesh TF T5 attention)",
        "activation": f"ReLU ({_T5}, section 2.1: a dense layer, a ReLU, a dense layer)",
        "ffn": f"dense ({_T5}, section 2.1)",
        "embedding": f"tied_t5: one N(0, 1) matrix for encoder input, decoder input and output, decoder output "
                     f"x d^-0.5 before the tied logits ({_T5}; Mesh TF T5)",
        "output": "full softmax",
        "sharing": "none",
        "init": "t5: N(0, 1/fan_in) on every projection, W_q N(0, 1/(d_model d_kv)) (Mesh TF T5; the Hugging "
                "Face port's T5PreTrainedModel._init_weights)",
        "dropout": "0.1: T5's dropout_rate (Hugging Face T5Config)",
        "dropout_at": f"'within the feed-forward network, on the skip connection, on the attention weights, and at "
                      f"the input and output of the entire stack' ({_T5}, section 2.1)",
        "clone_layers": "no: every layer initialised independently (Mesh TF)",
        "init_draws": f"{_CRN}; no claim about Mesh TF's draw order",
    },
)
def t5_profile(spec: ModelSpec) -> ModelSpec:
    """T5 (Mesh TF): pre-RMSNorm, no biases, shared relative bias, unscaled attention, tied embeddings, dropout 0.1."""
    return spec.replace(
        residual="pre", final_norm="auto", norm="rmsnorm", norm_eps=1e-6, bias=False, position="relative_bias",
        rel_buckets=32, rel_max_distance=128, attention="unscaled", activation="relu", ffn="dense",
        embedding="tied_t5", output="softmax", sharing="none", init="t5", dropout=0.1,
        dropout_at="embed,attention,residual,ffn,final", clone_layers=False, init_draws="per_module",
    )


@register_implementation(
    "gpt2",
    source=f"GPT-2 ({_GPT2}; openai/gpt-2 src/model.py) as reproduced by {_NANOGPT}",
    sources={
        "residual": f"pre-LN: 'layer normalization was moved to the input of each sub-block' ({_GPT2}, section 2.3)",
        "final_norm": f"auto (pre-LN): 'an additional layer normalization was added after the final "
                      f"self-attention block' ({_GPT2}, section 2.3)",
        "norm": "LayerNorm with bias (openai/gpt-2 norm; nanoGPT bias=True for GPT-2)",
        "norm_eps": "1e-5 (openai/gpt-2 norm epsilon; nanoGPT)",
        "activation": "gelu_tanh: GPT-2's tanh approximation of GeLU (openai/gpt-2 src/model.py gelu; nanoGPT uses "
                      "the exact nn.GELU)",
        "ffn": "dense 4d: c_fc -> gelu -> c_proj (openai/gpt-2 mlp; nanoGPT MLP)",
        "attention": "scaled dot-product, fused c_attn (openai/gpt-2 attn; nanoGPT CausalSelfAttention)",
        "position": "learned absolute positions wpe, N(0, 0.02^2) as nanoGPT (openai/gpt-2 draws 0.01)",
        "embedding": "tied_gpt2: wte N(0, 0.02^2), no input scaling, tied to the output (openai/gpt-2; nanoGPT "
                     "weight tying)",
        "output": "full softmax, lm_head without bias (nanoGPT)",
        "sharing": "none",
        "bias": "biases on c_attn, c_proj, c_fc (openai/gpt-2 conv1d; nanoGPT bias=True)",
        "init": f"gpt2: N(0, 0.02^2), residual projections / sqrt(2 n_layers) ({_GPT2}, section 2.3; {_NANOGPT} "
                "_init_weights)",
        "dropout": "0.1: resid_pdrop = embd_pdrop = attn_pdrop (Hugging Face GPT2Config)",
        "dropout_at": "embeddings (wte + wpe), attention weights, residual branches; none inside the MLP "
                      f"(Hugging Face GPT2Model; {_NANOGPT})",
        "clone_layers": "no: every layer initialised independently",
        "init_draws": f"{_CRN}; no claim about nanoGPT's draw order",
    },
)
def gpt2_profile(spec: ModelSpec) -> ModelSpec:
    """GPT-2 / nanoGPT: pre-LN, tanh-GeLU, learned positions, N(0, 0.02) init, tied embeddings, biases."""
    return spec.replace(
        residual="pre", final_norm="auto", norm="layernorm", norm_eps=1e-5, activation="gelu_tanh", ffn="dense",
        attention="sdpa", position="learned", embedding="tied_gpt2", output="softmax", sharing="none", bias=True,
        init="gpt2", dropout=0.1, dropout_at="embed,attention,residual", clone_layers=False, init_draws="per_module",
    )
