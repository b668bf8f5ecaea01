"""The (variant, task) pair under test: synthetic inputs, the model it builds, and its loss.

Part of the contract suite (:mod:`modtransfer.check.contract`). Inputs are built from the spec
alone, so model-level checks never need task data; comparisons of two passes share one random
state, so dropout masks match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modtransfer.core.model import IGNORE_INDEX, Transformer
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import Task

BATCH = 4
SRC_LEN = 12
TGT_LEN = 9           # differs from SRC_LEN so cross-attention shape bugs show
GRAD_RETRY_BATCH = 16


# -- inputs -------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """A synthetic batch: ``x`` feeds the encoder (or the decoder of a decoder-only model)."""

    x: Tensor
    x_pad: Tensor | None
    y: Tensor | None
    y_pad: Tensor | None
    targets: Tensor       # token ids (IGNORE_INDEX at pads) or continuous targets


def _tokens_or_features(spec: ModelSpec, shape: tuple[int, int], gen: torch.Generator) -> Tensor:
    if spec.vocab_size:
        return torch.randint(0, spec.vocab_size, shape, generator=gen)
    return torch.randn(*shape, spec.in_features, generator=gen)


def _pad_mask(batch: int, length: int) -> Tensor:
    """Trailing padding of different lengths per row (every row keeps >= 1 real position)."""
    lengths = torch.tensor([length, length - 2, length - 5, max(length // 2, 1)] * (batch // 4 + 1))[:batch]
    lengths = lengths.clamp(min=1)
    return torch.arange(length)[None, :] >= lengths[:, None]


def synthetic(spec: ModelSpec, topology: str, padded: bool, seed: int, batch: int = BATCH) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    src = min(SRC_LEN, spec.max_len)
    tgt = min(TGT_LEN, spec.max_len)
    x_len = src
    x = _tokens_or_features(spec, (batch, x_len), gen)
    x_pad = _pad_mask(batch, x_len) if padded else None
    y = y_pad = None
    out_len = x_len
    if topology == "encoder_decoder":
        y = _tokens_or_features(spec, (batch, tgt), gen)
        y_pad = _pad_mask(batch, tgt) if padded else None
        out_len = tgt
    if spec.vocab_size:
        targets = torch.randint(0, spec.vocab_size, (batch, out_len), generator=gen)
        out_pad = y_pad if topology == "encoder_decoder" else x_pad
        if out_pad is not None:
            targets = targets.masked_fill(out_pad, IGNORE_INDEX)
    else:
        targets = torch.randn(batch, out_len, spec.out_features, generator=gen)
    return Inputs(x, x_pad, y, y_pad, targets)


def replace_where(t: Tensor, where: Tensor, spec: ModelSpec, gen: torch.Generator) -> Tensor:
    """``t`` with the positions ``where`` [B, L] given other tokens (or other features)."""
    if spec.vocab_size:
        other = (t + torch.randint(1, max(spec.vocab_size, 2), t.shape, generator=gen)) % spec.vocab_size
        return torch.where(where, other, t)
    other = torch.randn(t.shape, generator=gen)
    return torch.where(where[..., None], other, t)


# -- running a model ----------------------------------------------------------------------------
def run_stack(model: Transformer, topology: str, inp: Inputs) -> tuple[Tensor, Tensor | None]:
    """(hidden states of the output stack, encoder memory or None)."""
    if topology == "encoder":
        return model.encode(inp.x, inp.x_pad), None
    if topology == "decoder":
        return model.decode(inp.x, inp.x_pad), None
    assert inp.y is not None, "an encoder-decoder's inputs have targets"
    memory = model.encode(inp.x, inp.x_pad)
    return model.decode(inp.y, inp.y_pad, memory, inp.x_pad), memory


def output_head(model: Transformer, h: Tensor) -> Tensor:
    return model.log_probs(h) if model.has_vocab else model.project(h)


def _synthetic_loss(model: Transformer, topology: str, inp: Inputs) -> Tensor:
    h, _ = run_stack(model, topology, inp)
    if model.has_vocab:
        nll = model.token_nll(h, inp.targets)
        return nll.sum() / (inp.targets != IGNORE_INDEX).sum().clamp(min=1)
    return 0.5 * torch.nn.functional.mse_loss(model.project(h), inp.targets)


def _total(loss: Tensor, model: Transformer) -> Tensor:
    aux = model.aux_loss()
    return loss + aux


def max_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference, scaled against the magnitude of ``a`` (inf when not finite)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    diff = (a - b).abs()
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    return float(diff.max()) / (1.0 + float(a.abs().max()))


TOL = 1e-5
_TRAIN_SEED = 1234    # the random state both passes of a train-mode comparison start from


class NonFinite(Exception):
    """A check met a non-finite output: it fails, and the checks after it are skipped."""


def finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t.detach()).all()):
        raise NonFinite(f"{what} are not finite")


def mode_pass(model: Transformer, train: bool, fn: Callable[[], Any]) -> Any:
    """``fn()`` without gradients, in training or evaluation mode; in training mode from the same
    random state every time (the caller's state is restored afterwards)."""
    model.train(train)
    with torch.no_grad():
        if not train:
            return fn()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_TRAIN_SEED)
            return fn()


# -- the pair under test ------------------------------------------------------------------------
class Pair:
    """One (variant, task): the spec, the data source, and the model built from the seed."""

    def __init__(self, expr: str, task: Task, spec: ModelSpec, resolved: Any, seed: int,
                 real_batches: Iterator[Any] | None, data_note: str) -> None:
        self.expr, self.task, self.spec, self.resolved, self.seed = expr, task, spec, resolved, seed
        self.topology: str = task.topology
        self.padded = "padding" in task.capabilities
        self.real_batches = real_batches
        self.real_batch = next(real_batches) if real_batches is not None else None
        self.data_note = data_note
        self.inputs = synthetic(spec, self.topology, self.padded, seed + 1)

    def build(self, seed: int) -> Transformer:
        from modtransfer.core.model import build

        torch.manual_seed(seed)
        return build(self.spec, self.topology)

    def loss(self, model: Transformer, batch: Any = None) -> Tensor:
        """Task loss (real batch) or synthetic loss, plus the auxiliary loss."""
        if self.real_batch is not None:
            base = self.task.loss(model, batch if batch is not None else self.real_batch)
        else:
            base = _synthetic_loss(model, self.topology, batch if batch is not None else self.inputs)
        return _total(base, model)

    def extra_batch(self, i: int) -> Any:
        if self.real_batches is not None:
            return next(self.real_batches)
        return synthetic(self.spec, self.topology, self.padded, self.seed + 100 + i, GRAD_RETRY_BATCH)
