"""Output-head modifications of today's language models.

output_softcap (Gemma Team 2024, "Gemma 2", arXiv 2408.00118, section 2): the output logits are
squashed to c tanh(z / c) before the softmax (c = 30 in Gemma 2; the modded-nanogpt records
moved from 30 to 15).
z_loss (Chowdhery et al. 2022, PaLM, arXiv 2204.02311, section 5): an auxiliary loss
1e-4 log^2 Z per token, Z the softmax's normaliser, which keeps log Z near 0 (stabilises training).
multi_token (Gloeckle et al. 2024, "Better & Faster Large Language Models via Multi-token
Prediction", arXiv 2404.19737): besides the next token, extra heads on the shared trunk predict
tokens t+2, ..., t+n through the shared unembedding; their losses join the training loss.

Each is a component of the ``output`` slot (so they do not combine with one another or with
adaptive softmax). The auxiliary terms are recorded as ``aux_loss`` with their own ``aux_weight``
(:meth:`modtransfer.core.model.Transformer.aux_loss`), which the training step adds to the task's
loss; they are computed in training mode only, so evaluation metrics are the main head's alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.output import FullSoftmax
from modtransfer.variants.modern_attention import softcap

#: Gemma 2's final logit cap (Gemma Team 2024, section 2).
OUTPUT_CAP = 30.0
#: PaLM's z-loss coefficient (Chowdhery et al. 2022, section 5).
Z_LOSS_WEIGHT = 1.0e-4


@register_component("output", "softcap_softmax", paper="Gemma Team 2024, arXiv 2408.00118")
class SoftCapSoftmax(FullSoftmax):
    """softmax(c tanh(h W^T / c)): every logit within +-c (``spec.option("output_cap")``, 30 by default)."""

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__(spec, in_dim, tied)
        self.cap = float(spec.option("output_cap", OUTPUT_CAP))
        if self.cap <= 0:
            raise UserError(f"output_softcap: cap must be > 0, got {self.cap:g}")

    def logits(self, h: Tensor, weight: Tensor | None) -> Tensor:
        return softcap(super().logits(h, weight), self.cap)


def z_term(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of (log Z)^2 over the tokens with a target, log Z = logsumexp of the logits (PaLM)."""
    log_z = torch.logsumexp(logits.float(), dim=-1)
    keep = (targets != IGNORE_INDEX).to(log_z.dtype)
    return (log_z.square() * keep).sum() / keep.sum().clamp(min=1.0)


@register_component("output", "z_loss_softmax", paper="Chowdhery et al. 2022, arXiv 2204.02311")
class ZLossSoftmax(FullSoftmax):
    """The full softmax; in training ``aux_loss`` = mean (log Z)^2 with ``aux_weight`` 1e-4 (PaLM).

    The weight is ``spec.option("z_loss_weight")``; the task's loss and every metric are unchanged.
    """

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__(spec, in_dim, tied)
        self.aux_weight = float(spec.option("z_loss_weight", Z_LOSS_WEIGHT))
        if self.aux_weight < 0:
            raise UserError(f"z_loss: weight must be >= 0, got {self.aux_weight:g}")
        self.aux_loss: Tensor | None = None

    def token_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        logits = self.logits(h, weight)
        self.aux_loss = z_term(logits, targets) if self.training else None
        nll = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                              reduction="none")
        return nll.view(targets.shape)


def future_targets(targets: Tensor, ahead: int) -> Tensor:
    """The target ``ahead`` tokens after the next one: targets[:, t + ahead] at t, -100 past the end.

    ``targets[:, t]`` is token t+1 of a next-token task, so this is token t + 1 + ahead.
    """
    out = torch.full_like(targets, IGNORE_INDEX)
    if ahead < targets.shape[1]:
        out[:, : targets.shape[1] - ahead] = targets[:, ahead:]
    return out


@register_component("output", "multi_token", paper="Gloeckle et al. 2024, arXiv 2404.19737")
class MultiTokenSoftmax(FullSoftmax):
    """Next-token softmax plus n - 1 heads predicting tokens t+2 .. t+n (``spec.option("mtp_heads")`` = n).

    Head k maps the trunk's h_t through its own d x d linear layer and the shared unembedding
    (tied or this module's ``proj``); in training ``aux_loss`` is the sum over the extra heads of
    their mean NLL (``aux_weight`` 1: Gloeckle et al. weigh every head's loss equally). Gloeckle et
    al.'s heads are one Transformer layer each; here one linear map each (a CPU-scale head), stated
    as a simplification. Adds (n - 1) d^2 parameters. ``log_probs`` and ``token_nll`` are the next
    token's only, so inference and evaluation are the baseline's.
    """

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__(spec, in_dim, tied)
        n = int(spec.option("mtp_heads", 2))
        if n < 2:
            raise UserError(f"multi_token: heads must be >= 2 (the next token and at least one more), got {n}")
        self.heads = nn.ModuleList(nn.Linear(in_dim, in_dim, bias=False) for _ in range(n - 1))
        self.aux_weight = 1.0
        self.aux_loss: Tensor | None = None

    def token_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        if self.training:
            extra = [self._mean_nll(head(h), future_targets(targets, k + 1), weight)
                     for k, head in enumerate(self.heads)]
            self.aux_loss = torch.stack(extra).sum()
        else:
            self.aux_loss = None
        return super().token_nll(h, targets, weight)

    def _mean_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        nll = super().token_nll(h, targets, weight)
        keep = (targets != IGNORE_INDEX).to(nll.dtype)
        return nll.sum() / keep.sum().clamp(min=1.0)


# -- variants -----------------------------------------------------------------------------------
@register_variant("output_softcap", slot="output", paper="Gemma Team 2024, arXiv 2408.00118", requires=("vocab",))
def output_softcap(spec: ModelSpec, cap: float = OUTPUT_CAP) -> ModelSpec:
    """Output logits soft-capped to cap tanh(z / cap) (cap 30, Gemma 2)."""
    return spec.replace(output="softcap_softmax").with_options(output_cap=float(cap))


@register_variant("z_loss", slot="output", paper="Chowdhery et al. 2022, arXiv 2204.02311", requires=("vocab",))
def z_loss(spec: ModelSpec, weight: float = Z_LOSS_WEIGHT) -> ModelSpec:
    """Auxiliary loss 1e-4 log^2 Z on the output softmax's normaliser (PaLM)."""
    return spec.replace(output="z_loss_softmax").with_options(z_loss_weight=float(weight))


@register_variant("multi_token", slot="output", paper="Gloeckle et al. 2024, arXiv 2404.19737",
                  requires=("vocab", "decoder"))
def multi_token(spec: ModelSpec, heads: int = 2) -> ModelSpec:
    """Extra heads predicting tokens t+2..t+n through the shared unembedding (n = 2); lm only."""
    return spec.replace(output="multi_token").with_options(mtp_heads=int(heads))
