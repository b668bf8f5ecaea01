"""The output layer over the vocabulary (Narang et al. 2021, Table 1, "softmax" rows).

softmax (baseline): p(y | h) = softmax(h W^T), W tied to the embedding or owned here.

adaptive_softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs",
arXiv 1609.04309): the vocabulary, ordered by frequency, is cut into a head (the frequent
words plus one logit per tail cluster) and tail clusters of rarer words,
p(w | h) = p_head(w | h) for w in the head, p_head(c_i | h) * p_i(w | h) for w in tail i.
Tail i scores its words in d / div^i dimensions (d/4, d/16, ... with ``adaptive_div`` 4), so
rare words get less capacity; its words are only scored for tokens whose target lies in it.
adaptive_softmax_no_projection: the same clusters, every tail at the full dimension.

mixture_of_softmaxes (Yang et al. 2018, "Breaking the Softmax Bottleneck", arXiv 1711.03953):
p(w | h) = sum_k pi_k(h) softmax(tanh(P_k h) W^T)_w, with the prior pi(h) = softmax(U h); a
mixture of K softmaxes has high-rank log-probabilities, which a single softmax cannot.

Tying (``weight`` is the embedding's [V, d] matrix, or None when the output owns its own):

* softmax: logits = h W^T.
* adaptive softmax: the head's word rows are W[:head]; its cluster rows are owned. Tail i
  scores its rows of W after projecting both sides to d / div^i:
  logits_i = (P_i h) (Q_i W_i^T) — the embedding is shared and the tail still has reduced
  capacity. Without projection, logits_i = h W_i^T. Untied, every cluster owns its vectors
  at its own dimension (Grave et al.'s original form).
* mixture of softmaxes: every component scores with W (Yang et al. tie it to the input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.errors import UserError
from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.output import masked_nll


# -- adaptive softmax ------------------------------------------------------------------
def adaptive_bounds(spec: ModelSpec) -> list[int]:
    """Cluster boundaries ``[0, head, ..., V]`` over a frequency-ordered vocabulary.

    From ``spec.adaptive_cutoffs`` when set; otherwise the head holds the 10% most frequent
    types and two tails split the rest at V/3 (Grave et al. 2017 and Baevski & Auli 2019 use
    a head of 5-10% of the types, which covers most running tokens of Zipfian text).
    """
    vocab = spec.vocab_size
    if vocab < 1:
        raise UserError("adaptive softmax/input need a vocabulary (vocab_size > 0); use them on vocabulary tasks")
    if spec.adaptive_cutoffs:
        cuts = list(spec.adaptive_cutoffs)
        if any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)) or cuts[-1] >= vocab:
            raise UserError(
                f"ModelSpec.adaptive_cutoffs={cuts} must increase and stay below vocab_size={vocab}; "
                "fix them or leave them empty to derive them from the vocabulary size"
            )
    else:
        head = max(1, round(vocab / 10))
        cuts = sorted({c for c in (head, max(head + 1, round(vocab / 3))) if c < vocab})
    return [0, *cuts, vocab]


def cluster_dims(in_dim: int, n_clusters: int, div: float, project: bool) -> list[int]:
    """Dimension of each cluster: in_dim / div^i (cluster 0 is the head), or in_dim throughout."""
    if not project:
        return [in_dim] * n_clusters
    return [max(1, round(in_dim / div**i)) for i in range(n_clusters)]


def zipf_shares(bounds: list[int]) -> list[float]:
    """Share of running tokens in each cluster under Zipf's law, p(rank r) proportional to 1/r."""
    harmonic = [0.0]
    for r in range(1, bounds[-1] + 1):
        harmonic.append(harmonic[-1] + 1.0 / r)
    return [(harmonic[hi] - harmonic[lo]) / harmonic[-1] for lo, hi in zip(bounds, bounds[1:], strict=False)]


class TailCluster(nn.Module):
    """One tail cluster: scores its words in ``dim`` dimensions."""

    conditional_grad = True  # token_nll evaluates it only for tokens whose target it holds

    def __init__(self, in_dim: int, dim: int, size: int, tied: bool, project: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim, bias=False) if project else None
        # tied: the word vectors are rows of the embedding (projected by token_proj when reduced)
        self.token_proj = nn.Linear(in_dim, dim, bias=False) if tied and project else None
        self.out = None if tied else nn.Linear(dim, size, bias=False)

    def logits(self, h: Tensor, rows: Tensor | None) -> Tensor:
        x = self.proj(h) if self.proj is not None else h
        if self.out is not None:
            return self.out(x)
        assert rows is not None, "a tied tail cluster needs the embedding rows"
        # F.linear rather than calling token_proj: ``rows`` is a view of another module's
        # parameter, which FlopCounterMode's module tracker rejects as a module input under no_grad
        vectors = F.linear(rows, self.token_proj.weight) if self.token_proj is not None else rows
        return F.linear(x, vectors)


@register_component("output", "adaptive_softmax", paper="Grave et al. 2017, arXiv 1609.04309")
class AdaptiveSoftmax(nn.Module):
    """Head (frequent words + one logit per tail) and tail clusters at reduced dimension.

    Token ids must be ordered by frequency (id 0 the most frequent): the head is the first
    ``adaptive_cutoffs[0]`` ids.
    """

    project = True

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__()
        self.bounds = adaptive_bounds(spec)
        self.shortlist = self.bounds[1]
        n_tails = len(self.bounds) - 2
        dims = cluster_dims(in_dim, n_tails + 1, spec.adaptive_div, self.project)
        self.short = None if tied else nn.Linear(in_dim, self.shortlist, bias=False)
        self.cluster = nn.Linear(in_dim, n_tails, bias=False) if n_tails else None
        self.tails = nn.ModuleList(
            TailCluster(in_dim, dims[i + 1], hi - lo, tied, self.project)
            for i, (lo, hi) in enumerate(zip(self.bounds[1:-1], self.bounds[2:], strict=True))
        )
        self.register_buffer("tail_starts", torch.tensor(self.bounds[1:-1], dtype=torch.long), persistent=False)
        self.tail_shares = zipf_shares(self.bounds)[1:]

    def head_weight(self, weight: Tensor | None) -> Tensor:
        words = self.short.weight if self.short is not None else weight[: self.shortlist]
        return words if self.cluster is None else torch.cat([words, self.cluster.weight], dim=0)

    def _rows(self, weight: Tensor | None, i: int) -> Tensor | None:
        return None if weight is None else weight[self.bounds[i + 1]: self.bounds[i + 2]]

    def log_probs(self, h: Tensor, weight: Tensor | None) -> Tensor:
        """Exact log p(w | h) for every word [..., V] (for decoding and evaluation)."""
        head = F.log_softmax(F.linear(h, self.head_weight(weight)).float(), dim=-1)
        parts = [head[..., : self.shortlist]]
        for i, tail in enumerate(self.tails):
            tail_lp = F.log_softmax(tail.logits(h, self._rows(weight, i)).float(), dim=-1)
            parts.append(head[..., self.shortlist + i: self.shortlist + i + 1] + tail_lp)
        return torch.cat(parts, dim=-1)

    def token_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        """-log p(target | h); tail i is evaluated only for the tokens whose target is in it.

        On the ``meta`` device (FLOP counting) the targets hold no data; tail i is then
        evaluated for the share of tokens a Zipfian text puts in it (``tail_shares``), so the
        count is the expected cost, not the cost of one batch.
        """
        if h.is_meta:
            return self._expected_cost_nll(h, targets, weight)
        flat_h = h.reshape(-1, h.shape[-1])
        flat_t = targets.reshape(-1)
        valid = flat_t != IGNORE_INDEX
        safe_t = flat_t.clamp(min=0)
        which = torch.bucketize(safe_t, self.tail_starts, right=True)  # 0: head, i + 1: tail i
        head = F.log_softmax(F.linear(flat_h, self.head_weight(weight)).float(), dim=-1)
        column = torch.where(which == 0, safe_t, self.shortlist + which - 1)
        nll = -head.gather(1, column.unsqueeze(1)).squeeze(1)
        for i, tail in enumerate(self.tails):
            rows = torch.nonzero((which == i + 1) & valid).squeeze(1)
            if rows.numel() == 0:
                continue
            tail_lp = F.log_softmax(tail.logits(flat_h[rows], self._rows(weight, i)).float(), dim=-1)
            local = (safe_t[rows] - self.bounds[i + 1]).unsqueeze(1)
            nll = nll.index_add(0, rows, -tail_lp.gather(1, local).squeeze(1))
        return torch.where(valid, nll, torch.zeros_like(nll)).view(targets.shape)

    def _expected_cost_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        """token_nll's computation for FLOP counting on ``meta``: every tail on its expected share."""
        flat_h = h.reshape(-1, h.shape[-1])
        head = F.log_softmax(F.linear(flat_h, self.head_weight(weight)).float(), dim=-1)
        nll = -head.gather(1, targets.reshape(-1, 1).clamp(0, self.shortlist - 1)).squeeze(1)
        for i, tail in enumerate(self.tails):
            rows = round(self.tail_shares[i] * flat_h.shape[0])
            if rows:
                F.log_softmax(tail.logits(flat_h[:rows], self._rows(weight, i)).float(), dim=-1)
        return nll.view(targets.shape)


@register_component("output", "adaptive_softmax_no_projection", paper="Grave et al. 2017, arXiv 1609.04309")
class AdaptiveSoftmaxNoProjection(AdaptiveSoftmax):
    """Adaptive softmax whose tail clusters keep the full dimension (no down-projection)."""

    project = False


# -- mixture of softmaxes --------------------------------------------------------------
def default_n_softmaxes(spec: ModelSpec) -> int:
    """``spec.n_softmaxes``, else 15 at d_model 512 and up (Yang et al. 2018), fewer when narrower."""
    return spec.n_softmaxes or min(15, max(2, spec.d_model // 32))


@register_component("output", "mixture_of_softmaxes", paper="Yang et al. 2018, arXiv 1711.03953")
class MixtureOfSoftmaxes(nn.Module):
    """sum_k pi_k(h) softmax(tanh(P_k h) W^T), mixed in log space (log-sum-exp)."""

    def __init__(self, spec: ModelSpec, in_dim: int, tied: bool) -> None:
        super().__init__()
        self.k = default_n_softmaxes(spec)
        self.in_dim = in_dim
        self.prior = nn.Linear(in_dim, self.k, bias=False)
        self.context = nn.Linear(in_dim, self.k * in_dim, bias=False)
        self.proj = None if tied else nn.Linear(in_dim, spec.vocab_size, bias=False)
        self.drop = nn.Dropout(spec.dropout)

    def contexts(self, h: Tensor) -> Tensor:
        """The K context vectors tanh(P_k h), shape [..., K, in_dim]."""
        return self.drop(torch.tanh(self.context(h))).unflatten(-1, (self.k, self.in_dim))

    def log_probs(self, h: Tensor, weight: Tensor | None) -> Tensor:
        ctx = self.contexts(h)
        logits = self.proj(ctx) if self.proj is not None else F.linear(ctx, weight)
        log_prior = F.log_softmax(self.prior(h).float(), dim=-1)
        return torch.logsumexp(log_prior.unsqueeze(-1) + F.log_softmax(logits.float(), dim=-1), dim=-2)

    def token_nll(self, h: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        return masked_nll(self.log_probs(h, weight), targets)


# -- variants --------------------------------------------------------------------------
selector("adaptive_softmax", slot="output", paper="Grave et al. 2017, arXiv 1609.04309", requires=("vocab",),
         output="adaptive_softmax",
         description="Adaptive softmax: frequent-word head + tail clusters at d/4, d/16 (frequency-ordered vocabulary).")
selector("adaptive_softmax_no_projection", slot="output", paper="Grave et al. 2017, arXiv 1609.04309",
         requires=("vocab",), output="adaptive_softmax_no_projection",
         description="Adaptive softmax with every tail cluster at the full dimension (no down-projection).")
selector("mixture_of_softmaxes", slot="output", paper="Yang et al. 2018, arXiv 1711.03953", requires=("vocab",),
         output="mixture_of_softmaxes", n_softmaxes=default_n_softmaxes,
         description="Mixture of K softmaxes (K = 15 at d_model >= 512, d_model/32 below, at least 2).")
