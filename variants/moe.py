"""Mixture-of-experts feed-forward layers: more parameters at the same FLOPs per token.

A router r(x) = softmax(W_r x) over N experts (``n_experts``, 4 unless set) sends each token
to its top-k experts; the layer's output is sum_{e in top-k} g_e(x) FFN_e(x). Every
``moe_every``-th layer of a stack is a mixture (layers moe_every - 1, 2 moe_every - 1, ...,
counting from 0, so with the default 2 every other layer starting from the second); the
others keep the dense FFN.

switch (Fedus et al. 2021, "Switch Transformers", arXiv 2101.03961): top-1 routing,
g = p_e(x), experts as wide as the dense FFN, so FLOPs per token match the baseline.
moe (Shazeer et al. 2017, arXiv 1701.06538; Lepikhin et al. 2020, GShard, arXiv 2006.16668):
top-2 routing with the two gates renormalised to sum to 1. To keep FLOPs per token matched,
each expert is d_ff / k wide (d_ff/2 for top-2), the trade Narang et al. 2021's Table 1
suggests (MoE 648M against Switch 1100M parameters at the same 11.7T FLOPs).

Load balancing (Fedus et al. eq. 4; GShard's l_aux in the same form): with f_i the fraction of
tokens whose first choice is expert i and P_i the mean router probability of expert i,
aux = N * sum_i f_i P_i, which is 1 under uniform routing. It is left in ``self.aux_loss``;
the model adds ``aux_loss_weight`` (alpha = 0.01 in Fedus et al.) times it to the loss.

Capacity (optional, ``switch(capacity_factor=1.25)``): in training each expert takes at most
ceil(capacity_factor * k * tokens / N) assignments of the batch; the overflow gets no update
from this layer (the residual carries it). Earlier positions win (time-major order over the
batch), so a decoder stays causal. Padded positions are not routed at all (the block passes
the padding mask, ``takes_pad_mask``): they take no capacity, do not count as tokens and stay
out of the load-balancing loss, so what padding holds never changes a real position's output.
Evaluation is dropless (Fedus et al. also evaluate with a larger capacity factor). Without a
capacity factor (the default) routing is dropless throughout.

Dispatch sorts the token-expert assignments by expert and runs each expert once on its
contiguous slice (a loop over the N experts, never over tokens). On the ``meta`` device,
used to count FLOPs, routing has no data; the slices are then split evenly, which counts
exactly the FLOPs of any dropless routing (k * tokens assignments in total, however they
fall), so the count does not depend on the routing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant
from modtransfer.variants.baseline.ffn import DenseFFN

DEFAULT_EXPERTS = 4


def n_experts(spec: ModelSpec) -> int:
    return spec.n_experts or DEFAULT_EXPERTS


def is_moe_layer(spec: ModelSpec, layer_index: int) -> bool:
    """Whether layer ``layer_index`` (from 0, per stack) is a mixture-of-experts layer."""
    return (layer_index + 1) % spec.moe_every == 0


def load_balancing_loss(probs: Tensor, first_choice: Tensor) -> Tensor:
    """N * sum_i f_i P_i (Fedus et al. 2021, eq. 4) for router probabilities [T, N]."""
    n = probs.shape[-1]
    counts = torch.zeros(n, device=probs.device, dtype=probs.dtype)
    counts = counts.scatter_add(0, first_choice, torch.ones_like(first_choice, dtype=probs.dtype))
    fraction = counts / first_choice.numel()
    return n * (fraction * probs.mean(dim=0)).sum()


def split_counts(expert_of: Tensor, n: int) -> list[int]:
    """Assignments per expert; on ``meta`` (no data) an even split of the same total."""
    total = expert_of.numel()
    if expert_of.is_meta:
        return [total // n + (1 if e < total % n else 0) for e in range(n)]
    return torch.bincount(expert_of, minlength=n).tolist()


class MixtureOfExperts(nn.Module):
    """Top-k routed experts (dense FFNs of width d_ff / k) with a load-balancing loss."""

    conditional_grad = True  # an expert no token was routed to gets no gradient from that batch
    takes_pad_mask = True    # padded positions are left out of routing

    def __init__(self, spec: ModelSpec, activation: Callable[[Tensor], Tensor], top_k: int) -> None:
        super().__init__()
        self.n = n_experts(spec)
        if not 1 <= top_k <= self.n:
            raise UserError(f"mixture of experts: top-k={top_k} needs 1 <= k <= n_experts={self.n}; change one of them")
        self.k = top_k
        self.capacity_factor = float(spec.option("capacity_factor", 0.0) or 0.0)
        width = max(1, round(spec.d_ff / top_k))
        self.router = nn.Linear(spec.d_model, self.n, bias=False)
        self.experts = nn.ModuleList(DenseFFN(spec.replace(d_ff=width), activation) for _ in range(self.n))
        self.aux_loss: Tensor | None = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router probabilities [T, N] (float32), gates [T, k] and experts [T, k] of tokens [T, d]."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        gates, experts = probs.topk(self.k, dim=-1)
        if self.k > 1:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return probs, gates, experts

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        limited = bool(self.capacity_factor) and self.training
        # with a capacity, earlier positions win (time-major order), so a token's update never
        # depends on tokens after it in any sequence of the batch
        time_major = limited and x.dim() == 3
        xs = x.transpose(0, 1) if time_major else x
        tokens = xs.reshape(-1, x.shape[-1])
        real: Tensor | None = None          # indices of the routed (unpadded) tokens
        if pad_mask is not None and x.dim() == 3 and not x.is_meta:
            keep = ~(pad_mask.transpose(0, 1) if time_major else pad_mask)
            real = keep.reshape(-1).nonzero().squeeze(1)
        routed = tokens if real is None else tokens[real]
        out = torch.zeros_like(tokens)
        if routed.shape[0] == 0:  # nothing to route: keep the router in the graph with a zero loss
            self.aux_loss = self.router.weight.sum() * 0.0
            return out.view_as(xs).transpose(0, 1) if time_major else out.view_as(x)
        probs, gates, experts = self.route(routed)
        self.aux_loss = load_balancing_loss(probs, experts[:, 0])
        expert_of = experts.reshape(-1)                      # assignment a = token * k + j
        order = torch.sort(expert_of, stable=True).indices   # grouped by expert, in token order
        flat_gates = gates.reshape(-1)
        capacity = math.ceil(self.capacity_factor * expert_of.numel() / self.n) if limited else None
        routed_out = torch.zeros_like(routed)
        start = 0
        for e, count in enumerate(split_counts(expert_of, self.n)):
            chosen = order[start: start + count]
            start += count
            if capacity is not None:
                chosen = chosen[:capacity]
            if chosen.numel() == 0:
                continue
            rows = chosen // self.k
            update = self.experts[e](routed[rows]) * flat_gates[chosen].unsqueeze(1).to(routed.dtype)
            routed_out = routed_out.index_add(0, rows, update)
        out = routed_out if real is None else out.index_copy(0, real, routed_out)
        out = out.view_as(xs)
        return out.transpose(0, 1) if time_major else out


@register_component("ffn", "switch", paper="Fedus et al. 2021, arXiv 2101.03961", honours_bias=True)
def switch_ffn(spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> nn.Module:
    """Switch FFN (top-1 routing) in every ``moe_every``-th layer, the dense FFN elsewhere."""
    if not is_moe_layer(spec, layer_index):
        return DenseFFN(spec, activation, layer_index)
    return MixtureOfExperts(spec, activation, top_k=1)


@register_component("ffn", "moe", paper="Lepikhin et al. 2020, arXiv 2006.16668", honours_bias=True)
def moe_ffn(spec: ModelSpec, activation: Callable[[Tensor], Tensor], layer_index: int = 0) -> nn.Module:
    """Top-``moe_top_k`` mixture of experts in every ``moe_every``-th layer, the dense FFN elsewhere."""
    if not is_moe_layer(spec, layer_index):
        return DenseFFN(spec, activation, layer_index)
    return MixtureOfExperts(spec, activation, top_k=spec.moe_top_k)


def _experts_spec(spec: ModelSpec, capacity_factor: float) -> ModelSpec:
    if spec.n_experts == 1:
        raise UserError("a mixture of experts needs n_experts >= 2 (0 picks 4)")
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, int | float) or capacity_factor < 0:
        raise UserError(f"capacity_factor must be a number >= 0 (0: no capacity limit), got {capacity_factor!r}")
    extra = dict(spec.extra)
    if capacity_factor:
        extra["capacity_factor"] = float(capacity_factor)
    return spec.replace(n_experts=n_experts(spec), extra=tuple(sorted(extra.items())))


@register_variant("switch", slot="ffn", paper="Fedus et al. 2021, arXiv 2101.03961", matches="flops")
def switch(spec: ModelSpec, capacity_factor: float = 0.0) -> ModelSpec:
    """Switch Transformer FFN: top-1 routing over n_experts full-width experts, every other layer."""
    return _experts_spec(spec, capacity_factor).replace(ffn="switch", moe_top_k=1)


@register_variant("moe", slot="ffn", paper="Shazeer et al. 2017, arXiv 1701.06538; Lepikhin et al. 2020, arXiv 2006.16668",
                  matches="flops")
def moe(spec: ModelSpec, capacity_factor: float = 0.0) -> ModelSpec:
    """Mixture of experts: top-2 routing over n_experts experts of width d_ff/2, every other layer."""
    return _experts_spec(spec, capacity_factor).replace(ffn="moe", moe_top_k=2)
