"""Where the norm sits around each residual branch, and residual schemes without norms.

pre  (baseline; Xiong et al. 2020, arXiv 2002.04745): x + F(norm(x)), final norm per stack.
post (Vaswani et al. 2017, the original Transformer): norm(x + F(x)).
rezero (Bachlechner et al. 2020, arXiv 2003.04887): x + alpha F(norm(x)), alpha a scalar, init 0.
fixup (Zhang et al. 2019, arXiv 1901.09321): no norm; scalar biases and multiplier, rescaled init.
sandwich (Ding et al. 2021, CogView, arXiv 2105.13290): x + norm(F(norm(x))).
deepnorm (Wang et al. 2022, DeepNet, arXiv 2203.00555): norm(alpha x + F(x)), beta-scaled init.

Components with their own initialisation apply it when built and again in
``reset_special(topology, stack)``, which the init component calls after its scheme (see
:mod:`modtransfer.variants.init`); it re-initialises from scratch, so a second call is harmless.

The baseline ``pre`` and :class:`ResidualBase` live in :mod:`modtransfer.variants.baseline.residual`.
:class:`ResidualBase` (exported as ``modtransfer.ResidualBase``) is the base for plugins: it
builds the norm, keeps the sublayer and the residual dropout, passes the masks and positions
on, and leaves :meth:`~ResidualBase.combine` (how the branch joins the stream) to override.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.residual import NormFactory, PreNorm, ResidualBase, branch_weights, output_layers


@register_component("residual", "post", paper="Vaswani et al. 2017, arXiv 1706.03762")
class PostNorm(PreNorm):
    """norm(x + F(x))."""

    final_norm = False

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return self.norm(x + self.drop(self.sublayer(x, **kw)))


@register_component("residual", "rezero", paper="Bachlechner et al. 2020, arXiv 2003.04887")
class ReZero(ResidualBase):
    """ReZero: x + alpha F(norm(x)), alpha a trained scalar per branch, initialised to 0.

    Every block is the identity at initialisation, so signals and gradients pass unchanged
    through any depth (Bachlechner et al. 2020, eq. 3). With ``norm='none'`` this is the paper's
    norm-free ReZero; with layernorm/rmsnorm it is Narang et al.'s "ReZero + LayerNorm/RMS Norm",
    which keeps the pre-norm stack's final norm.
    """

    final_norm = True

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__(spec, sublayer, norm, index, n_sublayers)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return x + self.alpha * self.drop(self.sublayer(self.norm(x), **kw))

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        self.alpha.zero_()


def _shift_input(owner: Fixup, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: add Fixup's scalar bias to the input of a branch's output layer."""
    return (args[0] + owner.bias_mid, *args[1:])


@register_component("residual", "fixup", paper="Zhang et al. 2019, arXiv 1901.09321")
class Fixup(nn.Module):
    """Fixup: residual learning without normalisation (Zhang et al. 2019, section 3).

    x + s F(x + b_in) + b_out, no norm anywhere, with the paper's three rules:
    1. the last layer of every residual branch starts at zero, so each block is the identity;
    2. the other layers of the branch get a standard init scaled by L^(-1/(2m-2)), L the number
       of residual branches of the stack and m the number of layers per branch;
    3. a scalar multiplier s (init 1) per branch and scalar biases (init 0) before its layers.
    Adapted to Transformer branches: m = 2 for both attention (W_v then W_o on the signal path)
    and the FFN (W1 then W2), hence the factor L^(-1/2) on W_v and W1, whose standard init is the
    baseline's own U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Fixup owns these layers' init, so an init
    scheme does not change them (``reset_special`` re-applies it, idempotently). W_q and W_k only
    shape the attention distribution and keep the scheme's init. The scalar biases sit before
    the branch (b_in), before its output layer (b_mid, a forward pre-hook) and after the
    multiplier (b_out). The paper's zero-initialised classifier is not applied (the output layer
    may be tied to the embedding).
    """

    final_norm = False

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.n_branches = n_sublayers
        self.layers_per_branch = 2
        self.bias_in = nn.Parameter(torch.zeros(()))
        self.bias_mid = nn.Parameter(torch.zeros(()))
        self.bias_out = nn.Parameter(torch.zeros(()))
        self.scale = nn.Parameter(torch.ones(()))
        self.drop = nn.Dropout(spec.dropout_for("residual"))
        for m in output_layers(sublayer):
            m.register_forward_pre_hook(functools.partial(_shift_input, self))
        self.reset_special()

    @property
    def branch_scale(self) -> float:
        """L^(-1/(2m-2)) (Zhang et al. 2019, rule 2)."""
        return self.n_branches ** (-1.0 / (2 * self.layers_per_branch - 2))

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return x + self.drop(self.scale * self.sublayer(x + self.bias_in, **kw) + self.bias_out)

    @torch.no_grad()
    def reset_special(self, topology: str = "", stack: str = "") -> None:
        """Apply rules 1-3 to the branch (from scratch, so calling it twice changes nothing)."""
        roles = branch_weights(self.sublayer)
        for w in roles["output"]:
            w.zero_()
        for w in roles["input"]:
            bound = w.shape[1] ** -0.5
            w.uniform_(-bound, bound).mul_(self.branch_scale)
        for p in (self.bias_in, self.bias_mid, self.bias_out):
            p.zero_()
        self.scale.fill_(1.0)


@register_component("residual", "sandwich", paper="Ding et al. 2021, arXiv 2105.13290")
class SandwichNorm(nn.Module):
    """Sandwich-LN (CogView, Ding et al. 2021, section 2.4): x + norm_out(F(norm_in(x))).

    Pre-LN plus a second norm at the end of every branch, which bounds what a branch can add to
    the residual stream (CogView's fix for value explosion in deep, fp16 training). Keeps the
    pre-norm stack's final norm.
    """

    final_norm = True

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__()
        self.norm_in = norm(spec.d_model, spec.norm_eps)
        self.norm_out = norm(spec.d_model, spec.norm_eps)
        self.sublayer = sublayer
        self.drop = nn.Dropout(spec.dropout_for("residual"))

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return x + self.drop(self.norm_out(self.sublayer(self.norm_in(x), **kw)))


def deepnorm_constants(topology: str, stack: str, n_encoder: int, n_decoder: int) -> tuple[float, float]:
    """(alpha, beta) of DeepNet (Wang et al. 2022, Figure 2 / Table 1).

    encoder-only (N layers): alpha = (2N)^(1/4), beta = (8N)^(-1/4);
    decoder-only (M layers): alpha = (2M)^(1/4), beta = (8M)^(-1/4);
    encoder-decoder: encoder alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16),
                     decoder alpha = (3M)^(1/4), beta = (12M)^(-1/4).
    """
    if topology == "encoder_decoder":
        if stack == "encoder":
            nm = n_encoder ** 4 * n_decoder
            return 0.81 * nm ** (1 / 16), 0.87 * nm ** (-1 / 16)
        return (3 * n_decoder) ** 0.25, (12 * n_decoder) ** -0.25
    n = n_encoder if stack == "encoder" else n_decoder
    return (2 * n) ** 0.25, (8 * n) ** -0.25


@register_component("residual", "deepnorm", paper="Wang et al. 2022, arXiv 2203.00555")
class DeepNorm(ResidualBase):
    """DeepNorm (DeepNet, Wang et al. 2022): x_{l+1} = norm(alpha x_l + F(x_l)).

    Post-LN with the residual up-weighted by alpha > 1, and the branch weights initialised
    Xavier-normal with gain beta < 1 (W_v, W_o and the FFN; W_q, W_k with gain 1), which bounds the
    model update by a constant independent of depth. alpha and beta depend on the topology and
    depths (:func:`deepnorm_constants`); a block only knows whether it has cross-attention, so
    the encoder of an encoder-decoder gets its constants from ``reset_special`` (called by the
    init component with the model's topology). No final norm: every branch already ends in one.
    """

    final_norm = False

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__(spec, sublayer, norm, index, n_sublayers)
        self.n_layers = spec.n_layers
        has_cross = n_sublayers == 3 * spec.n_layers
        self.alpha, self.beta = deepnorm_constants(
            "encoder_decoder" if has_cross else "decoder", "decoder", spec.n_layers, spec.n_layers)
        self.init_branch()

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return self.norm(self.alpha * x + self.drop(self.sublayer(x, **kw)))

    @torch.no_grad()
    def init_branch(self) -> None:
        roles = branch_weights(self.sublayer)
        for w in roles["score"]:
            nn.init.xavier_normal_(w, gain=1.0)
        for w in roles["input"] + roles["output"]:
            nn.init.xavier_normal_(w, gain=self.beta)

    def reset_special(self, topology: str = "", stack: str = "") -> None:
        if topology and stack:
            self.alpha, self.beta = deepnorm_constants(topology, stack, self.n_layers, self.n_layers)
        self.init_branch()


# -- variants --------------------------------------------------------------------------
selector("post_ln", slot="residual", paper="Vaswani et al. 2017, arXiv 1706.03762", residual="post",
         description="Post-LN, as in the original Transformer: norm(x + F(x)), no final norm.")
selector("rezero", slot="residual", paper="Bachlechner et al. 2020, arXiv 2003.04887", residual="rezero", norm="none",
         description="ReZero: x + alpha F(x), alpha initialised to 0, no normalisation at all.")
selector("rezero_layernorm", slot="residual", paper="Bachlechner et al. 2020, arXiv 2003.04887", residual="rezero",
         norm="layernorm",
         description="ReZero with a LayerNorm on the branch input: x + alpha F(LN(x)).")
selector("rezero_rmsnorm", slot="residual", paper="Bachlechner et al. 2020, arXiv 2003.04887", residual="rezero",
         norm="rmsnorm",
         description="ReZero with an RMSNorm on the branch input: x + alpha F(RMSNorm(x)).")
selector("fixup", slot="residual", paper="Zhang et al. 2019, arXiv 1901.09321", residual="fixup", norm="none",
         description="Fixup: no normalisation; zero-initialised last layers, rescaled branches, scalar biases.")
selector("sandwich_ln", slot="residual", paper="Ding et al. 2021, arXiv 2105.13290", residual="sandwich",
         description="Sandwich-LN: x + LN(F(LN(x))), a second norm closing every branch.")
selector("deepnorm", slot="residual", paper="Wang et al. 2022, arXiv 2203.00555", residual="deepnorm",
         description="DeepNorm: LN(alpha x + F(x)) with beta-scaled Xavier init of the branches.")
