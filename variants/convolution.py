"""Lightweight and dynamic convolutions in place of self-attention (Wu et al. 2019, "Pay Less
Attention with Lightweight and Dynamic Convolutions", ICLR, arXiv 1901.10430).

Each self-attention sublayer becomes a convolution block: a GLU input projection
u = (x W_a) * sigmoid(x W_b), a depthwise convolution of width k over the sequence whose kernel
is softmax-normalised over its k taps and shared by the d/H channels of each of H heads, then
the output projection. A causal decoder's kernel covers the current and the k - 1 previous
positions; an encoder's is centred. Padded positions are zeroed before the convolution, so they
never reach a real position. Cross-attention stays dot-product attention (Wu et al. keep it).

lightweight_conv: the kernel W [H, k] is a parameter (the same at every position).
dynamic_conv: the kernel is predicted at each position from that position's input,
W_i = softmax(x_i W_d) with W_d [d, H k], so it varies with time but sees one position only.

As Narang et al. 2021 ran them (Mesh TensorFlow's ``LocalConvAttnBlock``), the depthwise
convolution is a separable one: a pointwise d x d projection follows it. With it the lightweight
block has the 4 d^2 parameters of the attention it replaces (Table 1: 224M against 223M).
The kernel width is ``kernel`` (31 by default, Wu et al.'s width from the fourth layer on; one
width for every layer here). DropConnect on the normalised kernel uses the attention dropout rate.
These blocks have no attention logits, so an additive position bias (relative_bias, alibi) is
rejected when the spec is checked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.attention import AttentionBase, MultiHeadAttention

_WU = "Wu et al. 2019, arXiv 1901.10430"
DEFAULT_KERNEL = 31


def kernel_width(spec: ModelSpec) -> int:
    return int(spec.option("conv_kernel", DEFAULT_KERNEL))


def windows(u: Tensor, k: int, causal: bool) -> Tensor:
    """[B, T, C] -> [B, T, C, k]: the k inputs each output position convolves (zeros off the ends);
    causal: positions i-k+1..i; otherwise centred, i-(k-1)//2..i+k//2."""
    left = k - 1 if causal else (k - 1) // 2
    padded = F.pad(u, (0, 0, left, k - 1 - left))
    return padded.unfold(1, k, 1)


class ConvolutionBlock(nn.Module):
    """GLU, depthwise softmax-normalised convolution, pointwise projection, output projection."""

    dynamic = False
    honours_bias = True

    def __init__(self, spec: ModelSpec, causal: bool = False, cross: bool = False) -> None:
        super().__init__()
        if spec.d_model % spec.n_heads:
            raise UserError(f"a convolution block ties d_model / n_heads channels per head; d_model={spec.d_model} "
                            f"is not divisible by n_heads={spec.n_heads}")
        d = spec.d_model
        self.causal, self.n_heads, self.k = causal, spec.n_heads, kernel_width(spec)
        self.glu = nn.Linear(d, 2 * d, bias=spec.bias)
        if self.dynamic:
            self.kernel_proj = nn.Linear(d, self.n_heads * self.k, bias=spec.bias)
        else:
            self.kernel = nn.Parameter(torch.zeros(self.n_heads, self.k))
        self.pointwise = nn.Linear(d, d, bias=spec.bias)
        self.out = nn.Linear(d, d, bias=spec.bias)
        self.dropout = spec.dropout_for("attention")

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> None:
        _NoLogits.check_spec(spec)  # no logits: an additive position bias has nowhere to go
        if kernel_width(spec) < 1:
            raise UserError(f"the convolution kernel width must be >= 1, got {kernel_width(spec)}")

    def kernels(self, x: Tensor) -> Tensor:
        """Normalised kernels: [H, k] (lightweight) or [B, T, H, k] (dynamic)."""
        raw = self.kernel_proj(x).unflatten(-1, (self.n_heads, self.k)) if self.dynamic else self.kernel
        weights = torch.softmax(raw.float(), dim=-1).to(x.dtype)
        drop = self.dropout if self.training else 0.0
        return F.dropout(weights, drop, training=drop > 0)

    def convolve(self, u: Tensor, w: Tensor) -> Tensor:
        b, t, d = u.shape
        win = windows(u, self.k, self.causal).reshape(b, t, self.n_heads, d // self.n_heads, self.k)
        w = w[:, :, :, None, :] if w.dim() == 4 else w[None, None, :, None, :]
        return (win * w).sum(-1).reshape(b, t, d)

    def forward(self, x: Tensor, kv: Tensor | None = None, *, pad_mask: Tensor | None = None,
                bias: Tensor | None = None, position: nn.Module | None = None) -> Tensor:
        a, g = self.glu(x).chunk(2, dim=-1)
        u = a * torch.sigmoid(g)
        if pad_mask is not None:
            u = u.masked_fill(pad_mask[..., None], 0.0)
        return self.out(self.pointwise(self.convolve(u, self.kernels(x))))

    def branch_weights(self) -> dict[str, list[Tensor]]:
        a, g = self.glu.weight.detach().chunk(2, dim=0)
        score = [self.kernel_proj.weight.detach()] if self.dynamic else []
        return {"score": score, "input": [a, g, self.pointwise.weight.detach()], "output": [self.out.weight.detach()]}

    def output_layers(self) -> list[nn.Module]:
        return [self.out]


class _NoLogits(AttentionBase):
    """Only for its ``check_spec``: an attention without logits."""

    supports_bias = False


class DynamicConvolutionBlock(ConvolutionBlock):
    """The convolution block with a kernel predicted from each position's input."""

    dynamic = True


def _component(name: str, cls: type[ConvolutionBlock]) -> None:
    def build(spec: ModelSpec, causal: bool = False, cross: bool = False) -> nn.Module:
        return MultiHeadAttention(spec, causal, cross) if cross else cls(spec, causal, cross)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{cls.__name__} in place of self-attention (Wu et al. 2019); dot-product cross-attention."
    build.check_spec = cls.check_spec  # type: ignore[attr-defined]
    build.honours_bias = True  # type: ignore[attr-defined]
    register_component("attention", name, paper=_WU)(build)


_component("lightweight_conv", ConvolutionBlock)
_component("dynamic_conv", DynamicConvolutionBlock)


def _kernel_spec(spec: ModelSpec, attention: str, kernel: int) -> ModelSpec:
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
        raise UserError(f"{attention}: kernel must be a positive integer, got {kernel!r}")
    out = spec.replace(attention=attention)
    return out.with_options(conv_kernel=kernel) if kernel != DEFAULT_KERNEL else out


@register_variant("lightweight_conv", slot="attention", paper=_WU)
def lightweight_conv(spec: ModelSpec, kernel: int = DEFAULT_KERNEL) -> ModelSpec:
    """Lightweight convolution (a learned softmax-normalised kernel per head) in place of self-attention."""
    return _kernel_spec(spec, "lightweight_conv", kernel)


@register_variant("dynamic_conv", slot="attention", paper=_WU)
def dynamic_conv(spec: ModelSpec, kernel: int = DEFAULT_KERNEL) -> ModelSpec:
    """Dynamic convolution (a kernel predicted from each position) in place of self-attention."""
    return _kernel_spec(spec, "dynamic_conv", kernel)


def convolution_params(spec: ModelSpec, dynamic: bool) -> int:
    """Parameters of one convolution block, by hand (biases off): GLU, kernel, pointwise, output."""
    d, h, k = spec.d_model, spec.n_heads, kernel_width(spec)
    return 2 * d * d + (d * h * k if dynamic else h * k) + d * d + d * d
