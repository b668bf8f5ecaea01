"""The contract every variant must keep, on every task it applies to (``modtransfer check``).

A modification can be wrong in ways a training curve hides: a decoder that peeks at future
tokens learns a language model that looks *better* than the baseline; an encoder that reads
padding scores differently on batches of different shapes; a parameter that never receives a
gradient silently shrinks the model; a "parameter-matched" variant that is not matched
compares two different budgets. :func:`run_contract` checks, for one variant expression and
each task it applies to, on a tiny model:

``forward``      shapes of hidden states and heads; finite outputs; log-probabilities that
                 normalise and agree with ``token_nll``;
``meta``         the model builds and runs on the ``meta`` device, where ``run`` counts its
                 parameters and FLOPs before training;
``loss``         a finite training loss (``task.loss`` on a real batch when the task's data is
                 on disk, a synthetic batch otherwise) plus the auxiliary loss;
``gradients``    every parameter that requires grad receives a finite gradient (modules whose
                 parameters are used conditionally, e.g. routed experts, declare
                 ``conditional_grad = True``; they are given extra batches first);
``causality``    in a decoder, changing tokens after position t never changes hidden states or
                 log-probabilities at positions <= t, in evaluation and in training mode (the
                 two passes of a comparison share one random state, so dropout masks match;
                 a router whose capacity is filled batch-major leaks only in training);
``padding``      on tasks with padding, outputs at real positions ignore what the padded
                 positions hold (encoder memory, decoder states, and the decoder through memory),
                 in evaluation and in training mode;
``determinism``  the same seed builds the same model and gives the same loss;
``state_dict``   a ``torch.save`` / ``torch.load(weights_only=True)`` round trip into a model
                 built with another seed reproduces the outputs;
``matching``     a variant declaring ``matches="params"`` (``"flops"``) stays within 2% of the
                 baseline's parameters (forward FLOPs per token) at every size preset.

Model-level checks use synthetic inputs built from the spec, so they never need data. Checks
run in the order above; the first one that meets a non-finite output fails and every later
check is ``skipped`` (a NaN makes every comparison after it meaningless). An exception raised
in a plugin's code is reported with the plugin's file, line and function and the slot it was
called through (:func:`plugin_frame`).
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modtransfer.core.errors import ConflictError, UserError
from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.spec import ModelSpec

Status = Literal["passed", "failed", "skipped"]

#: Checks in the order they are reported.
CHECKS = ("forward", "meta", "loss", "gradients", "causality", "padding", "determinism", "state_dict", "matching")

#: The model the contract builds: small enough that every pair takes a fraction of a second.
CONTRACT_SPEC = ModelSpec(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64)
#: Vocabulary and feature sizes used when a task cannot configure the spec without its data.
FALLBACK_VOCAB = 97
FALLBACK_FEATURES = (8, 4)

BATCH = 4
SRC_LEN = 12
TGT_LEN = 9           # differs from SRC_LEN so cross-attention shape bugs show
GRAD_RETRIES = 3      # extra batches given to parameters without a gradient
GRAD_RETRY_BATCH = 16
MATCH_TOLERANCE = 0.02


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of one (variant, task) pair."""

    variant: str
    task: str
    check: str
    status: Status
    detail: str = ""


# -- inputs -------------------------------------------------------------------------------------
@dataclass
class _Inputs:
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


def _synthetic(spec: ModelSpec, topology: str, padded: bool, seed: int, batch: int = BATCH) -> _Inputs:
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
    return _Inputs(x, x_pad, y, y_pad, targets)


def _replace_where(t: Tensor, where: Tensor, spec: ModelSpec, gen: torch.Generator) -> Tensor:
    """``t`` with the positions ``where`` [B, L] given other tokens (or other features)."""
    if spec.vocab_size:
        other = (t + torch.randint(1, max(spec.vocab_size, 2), t.shape, generator=gen)) % spec.vocab_size
        return torch.where(where, other, t)
    other = torch.randn(t.shape, generator=gen)
    return torch.where(where[..., None], other, t)


# -- running a model ----------------------------------------------------------------------------
def _forward(model: Any, topology: str, inp: _Inputs) -> tuple[Tensor, Tensor | None]:
    """(hidden states of the output stack, encoder memory or None)."""
    if topology == "encoder":
        return model.encode(inp.x, inp.x_pad), None
    if topology == "decoder":
        return model.decode(inp.x, inp.x_pad), None
    memory = model.encode(inp.x, inp.x_pad)
    return model.decode(inp.y, inp.y_pad, memory, inp.x_pad), memory


def _head(model: Any, h: Tensor) -> Tensor:
    return model.log_probs(h) if model.has_vocab else model.project(h)


def _synthetic_loss(model: Any, topology: str, inp: _Inputs) -> Tensor:
    h, _ = _forward(model, topology, inp)
    if model.has_vocab:
        nll = model.token_nll(h, inp.targets)
        return nll.sum() / (inp.targets != IGNORE_INDEX).sum().clamp(min=1)
    return 0.5 * torch.nn.functional.mse_loss(model.project(h), inp.targets)


def _total(loss: Tensor, model: Any) -> Tensor:
    aux = model.aux_loss()
    return loss + aux if isinstance(aux, Tensor) else loss + float(aux)


def _max_diff(a: Tensor, b: Tensor) -> float:
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


_TOL = 1e-5
_TRAIN_SEED = 1234    # the random state both passes of a train-mode comparison start from


class NonFinite(Exception):
    """A check met a non-finite output: it fails, and the checks after it are skipped."""


def _finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t.detach()).all()):
        raise NonFinite(f"{what} are not finite")


def _mode_pass(model: Any, train: bool, fn: Callable[[], Any]) -> Any:
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
class _Pair:
    """One (variant, task): the spec, the data source, and the model built from the seed."""

    def __init__(self, expr: str, task: Any, spec: ModelSpec, resolved: Any, seed: int,
                 real_batches: Iterator[Any] | None, data_note: str) -> None:
        self.expr, self.task, self.spec, self.resolved, self.seed = expr, task, spec, resolved, seed
        self.topology: str = task.topology
        self.padded = "padding" in task.capabilities
        self.real_batches = real_batches
        self.real_batch = next(real_batches) if real_batches is not None else None
        self.data_note = data_note
        self.inputs = _synthetic(spec, self.topology, self.padded, seed + 1)

    def build(self, seed: int) -> nn.Module:
        from modtransfer.core.model import build

        torch.manual_seed(seed)
        return build(self.spec, self.topology)

    def loss(self, model: Any, batch: Any = None) -> Tensor:
        """Task loss (real batch) or synthetic loss, plus the auxiliary loss."""
        if self.real_batch is not None:
            base = self.task.loss(model, batch if batch is not None else self.real_batch)
        else:
            base = _synthetic_loss(model, self.topology, batch if batch is not None else self.inputs)
        return _total(base, model)

    def extra_batch(self, i: int) -> Any:
        if self.real_batches is not None:
            return next(self.real_batches)
        return _synthetic(self.spec, self.topology, self.padded, self.seed + 100 + i, GRAD_RETRY_BATCH)


# -- the checks ---------------------------------------------------------------------------------
Outcome = tuple[Status, str]


def _check_forward(pair: _Pair, model: Any) -> Outcome:
    spec, inp = pair.spec, pair.inputs
    model.eval()
    with torch.no_grad():
        h, memory = _forward(model, pair.topology, inp)
        b = inp.x.shape[0]
        length = inp.y.shape[1] if inp.y is not None else inp.x.shape[1]
        if tuple(h.shape) != (b, length, spec.d_model):
            return "failed", f"hidden states have shape {tuple(h.shape)}, expected {(b, length, spec.d_model)}"
        if memory is not None and tuple(memory.shape) != (b, inp.x.shape[1], spec.d_model):
            return "failed", f"encoder memory has shape {tuple(memory.shape)}, expected {(b, inp.x.shape[1], spec.d_model)}"
        real = ~(inp.y_pad if inp.y is not None else inp.x_pad) if pair.padded else torch.ones(b, length, dtype=torch.bool)
        if not bool(torch.isfinite(h[real]).all()):
            raise NonFinite("hidden states are not finite at real positions")
        if model.has_vocab:
            lp = model.log_probs(h)
            if tuple(lp.shape) != (b, length, spec.vocab_size):
                return "failed", f"log_probs have shape {tuple(lp.shape)}, expected {(b, length, spec.vocab_size)}"
            if not bool(torch.isfinite(lp[real]).all()):
                raise NonFinite("log_probs are not finite at real positions")
            norm = float((torch.logsumexp(lp[real].double(), dim=-1)).abs().max())
            if norm > 1e-3:
                return "failed", f"log_probs do not normalise: |logsumexp| up to {norm:.2e}"
            targets = inp.targets
            nll = model.token_nll(h, targets)
            if tuple(nll.shape) != tuple(targets.shape):
                return "failed", f"token_nll has shape {tuple(nll.shape)}, expected {tuple(targets.shape)}"
            keep = targets != IGNORE_INDEX
            if bool((nll[~keep] != 0).any()):
                return "failed", "token_nll is not 0 where targets == -100"
            want = -lp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            gap = _max_diff(want[keep], nll[keep])
            if gap > 1e-3:
                return "failed", f"token_nll disagrees with -log_probs at the targets (scaled diff {gap:.2e})"
            head = f"log_probs {tuple(lp.shape)}"
        else:
            out = model.project(h)
            if tuple(out.shape) != (b, length, spec.out_features):
                return "failed", f"project() has shape {tuple(out.shape)}, expected {(b, length, spec.out_features)}"
            if not bool(torch.isfinite(out).all()):
                raise NonFinite("project() outputs are not finite")
            head = f"project {tuple(out.shape)}"
        aux = model.aux_loss()
        if isinstance(aux, Tensor) and (aux.numel() != 1 or not bool(torch.isfinite(aux).all())):
            return "failed", f"aux_loss() is not a finite scalar: {aux}"
    return "passed", f"hidden {tuple(h.shape)}, {head}"


def _check_gradients(pair: _Pair, model: Any, loss: Tensor) -> Outcome:
    model.train()
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def lacking() -> list[str]:
        return [n for n, p in params if p.grad is None]

    missing, retries = lacking(), 0
    while missing and retries < GRAD_RETRIES:  # routed parameters may need more tokens
        pair.loss(model, pair.extra_batch(retries)).backward()
        retries += 1
        missing = lacking()
    bad = [n for n, p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        return "failed", f"non-finite gradient in {len(bad)} parameter(s): {_names(bad)}"
    declared = [n for n in missing if _conditional(model, n)]
    undeclared = [n for n in missing if n not in declared]
    if undeclared:
        return "failed", (
            f"{len(undeclared)} parameter(s) got no gradient after {1 + retries} batch(es): {_names(undeclared)} "
            "(unused parameters; set conditional_grad = True on a module whose parameters are routed)"
        )
    detail = f"{len(params)} parameter tensors, all with finite gradients"
    if retries:
        detail += f" ({1 + retries} batches needed)"
    if declared:
        detail = (f"{len(params) - len(declared)} of {len(params)} parameter tensors got finite gradients; "
                  f"{len(declared)} conditionally used (conditional_grad) got none in {1 + retries} batches: "
                  f"{_names(declared)}")
    return "passed", detail


def _names(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _conditional(model: nn.Module, param_name: str) -> bool:
    """Whether a module on the path to a parameter declares ``conditional_grad``."""
    parts = param_name.split(".")[:-1]
    module: nn.Module = model
    if getattr(module, "conditional_grad", False):
        return True
    for part in parts:
        module = getattr(module, part)
        if getattr(module, "conditional_grad", False):
            return True
    return False


def _decode_head(model: Any, tokens: Tensor, memory: Tensor | None, memory_pad: Tensor | None,
                 pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
    h = model.decode(tokens, pad, memory, memory_pad)
    return h, _head(model, h)


def _check_causality(pair: _Pair, model: Any) -> Outcome:
    if pair.topology == "encoder":
        return "skipped", "no decoder in an encoder task"
    spec, inp = pair.spec, pair.inputs
    tokens = inp.y if pair.topology == "encoder_decoder" else inp.x
    assert tokens is not None
    n = tokens.shape[1]
    cuts = sorted({0, n // 2, n - 2})
    gen = torch.Generator().manual_seed(pair.seed + 7)
    changed = []
    for t in cuts:
        future = torch.zeros(tokens.shape[:2], dtype=torch.bool)
        future[:, t + 1:] = True
        changed.append(_replace_where(tokens, future, spec, gen))

    def run(train: bool, target: Tensor) -> tuple[Tensor, Tensor]:
        def fn() -> tuple[Tensor, Tensor]:
            memory = model.encode(inp.x, inp.x_pad) if pair.topology == "encoder_decoder" else None
            return _decode_head(model, target, memory, inp.x_pad if memory is not None else None)
        return _mode_pass(model, train, fn)

    for train in (False, True):
        mode = "training" if train else "evaluation"
        h0, out0 = run(train, tokens)
        _finite(h0, f"decoder states ({mode} mode)")
        _finite(out0, f"decoder outputs ({mode} mode)")
        for t, other in zip(cuts, changed, strict=True):
            h1, out1 = run(train, other)
            for what, a, b in (("hidden states", h0, h1), ("log-probs" if model.has_vocab else "outputs", out0, out1)):
                gap = _max_diff(a[:, : t + 1], b[:, : t + 1])
                if gap > _TOL:
                    return "failed", (f"{what} at positions <= {t} changed (scaled diff {gap:.2e}) in {mode} mode "
                                      f"when only tokens after {t} of {n} changed: the decoder sees the future")
    return "passed", f"positions <= t unchanged for t in {cuts} of {n}, in evaluation and training mode"


def _check_padding(pair: _Pair, model: Any) -> Outcome:
    if not pair.padded:
        return "skipped", "the task has no padding"
    for train in (False, True):
        outcome = _padding_pass(pair, model, train)
        if outcome is not None:
            return outcome
    checked = ["decoder"] if pair.topology == "decoder" else ["encoder"] if pair.topology == "encoder" else [
        "encoder", "memory", "decoder"]
    return "passed", f"real positions ignore padded tokens ({', '.join(checked)}; evaluation and training mode)"


def _padding_pass(pair: _Pair, model: Any, train: bool) -> Outcome | None:
    """A failure of the padding check in one mode, or None."""
    spec, inp = pair.spec, pair.inputs
    gen = torch.Generator().manual_seed(pair.seed + 11)
    mode = "training" if train else "evaluation"
    assert inp.x_pad is not None
    x2 = _replace_where(inp.x, inp.x_pad, spec, gen)
    real_x = ~inp.x_pad

    def differs(what: str, a: Tensor, b: Tensor, real: Tensor, why: str) -> Outcome | None:
        _finite(a[real], f"{what} at real positions ({mode} mode)")
        if (gap := _max_diff(a[real], b[real])) > _TOL:
            return "failed", f"{what} {why} (scaled diff {gap:.2e}, {mode} mode)"
        return None

    if pair.topology == "decoder":
        h1, o1 = _mode_pass(model, train, lambda: _decode_head(model, inp.x, None, None, inp.x_pad))
        h2, o2 = _mode_pass(model, train, lambda: _decode_head(model, x2, None, None, inp.x_pad))
        for what, a, b in (("decoder states", h1, h2), ("decoder outputs", o1, o2)):
            if bad := differs(what, a, b, real_x, "at real positions depend on padded tokens"):
                return bad
        return None
    if pair.topology == "encoder":
        m1, o1 = _mode_pass(model, train, lambda: _encode_head(model, inp.x, inp.x_pad))
        m2, o2 = _mode_pass(model, train, lambda: _encode_head(model, x2, inp.x_pad))
        for what, a, b in (("encoder states", m1, m2), ("encoder outputs", o1, o2)):
            if bad := differs(what, a, b, real_x, "at real positions depend on padded tokens"):
                return bad
        return None
    assert inp.y is not None and inp.y_pad is not None
    real_y = ~inp.y_pad
    y2 = _replace_where(inp.y, inp.y_pad, spec, gen)

    def seq2seq(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory = model.encode(x, inp.x_pad)
        return (memory, *_decode_head(model, y, memory, inp.x_pad, inp.y_pad))

    m1, h1, o1 = _mode_pass(model, train, lambda: seq2seq(inp.x, inp.y))
    m2, h2, o2 = _mode_pass(model, train, lambda: seq2seq(x2, inp.y))
    if bad := differs("encoder states", m1, m2, real_x, "at real positions depend on padded tokens"):
        return bad
    for what, a, b in (("decoder states", h1, h2), ("decoder log-probs", o1, o2)):
        if bad := differs(what, a, b, real_y, "depend on padded source tokens through memory"):
            return bad
    _, h3, o3 = _mode_pass(model, train, lambda: seq2seq(inp.x, y2))
    for what, a, b in (("decoder states", h1, h3), ("decoder log-probs", o1, o3)):
        if bad := differs(what, a, b, real_y, "at real positions depend on padded target tokens"):
            return bad
    return None


def _encode_head(model: Any, x: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    m = model.encode(x, pad)
    return m, _head(model, m)


def _check_meta(pair: _Pair) -> Outcome:
    """Build and run the model on ``meta`` exactly as ``run`` does to count parameters and FLOPs."""
    from modtransfer.core.model import count_flops, count_params

    config = getattr(pair.task, "config", {}) or {}
    seq = int(config.get("seq_len") or config.get("max_len") or pair.spec.max_len)
    params = count_params(pair.spec, pair.topology)
    flops = count_flops(pair.spec, pair.topology, seq)
    return "passed", f"{params:,} parameters and {flops:,.0f} FLOPs per token counted on meta (sequence {seq})"


def _check_determinism(loss_a: Tensor, loss_b: Tensor) -> Outcome:
    a, b = float(loss_a.detach()), float(loss_b.detach())
    if a == b:
        return "passed", f"loss {a:.6g} twice from the same seed"
    return "failed", f"the same seed gave losses {a!r} and {b!r}"


def _check_state_dict(pair: _Pair, model: Any) -> Outcome:
    fresh = pair.build(pair.seed + 1)
    own = model.state_dict()
    other = fresh.state_dict()
    differed = any(k in other and not torch.equal(v, other[k]) for k, v in own.items())
    buf = io.BytesIO()
    torch.save(own, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    try:
        fresh.load_state_dict(loaded, strict=True)
    except RuntimeError as exc:
        return "failed", f"load_state_dict into a fresh model failed: {str(exc).splitlines()[0]}"
    model.eval()
    fresh.eval()
    with torch.no_grad():
        h1, _ = _forward(model, pair.topology, pair.inputs)
        h2, _ = _forward(fresh, pair.topology, pair.inputs)
        gaps = [_max_diff(h1, h2), _max_diff(_head(model, h1), _head(fresh, h2))]
    if max(gaps) > 1e-6:
        return "failed", (f"outputs differ after a state_dict round trip (scaled diff {max(gaps):.2e}): "
                          "some state is neither a parameter nor a persistent buffer")
    note = "" if differed else " (the fresh model was already identical: weights do not depend on the seed)"
    return "passed", f"{len(own)} tensors saved and loaded, identical outputs{note}"


@lru_cache(maxsize=256)
def _count(spec: ModelSpec, topology: str, kind: str) -> float:
    from modtransfer.core.model import count_flops, count_params

    return float(count_params(spec, topology) if kind == "params" else count_flops(spec, topology))


def _counted(spec: ModelSpec, topology: str, kind: str) -> float:
    try:
        return _count(spec, topology, kind)
    except TypeError:  # an unhashable value in spec.extra: count without the cache
        return _count.__wrapped__(spec, topology, kind)


def _check_matching(pair: _Pair, configure: Callable[[ModelSpec], ModelSpec]) -> Outcome:
    from modtransfer.core.sizes import size_names, size_preset
    from modtransfer.core.variant import resolve

    kinds = sorted(set(pair.resolved.matches))
    if not kinds:
        return "skipped", "the variant declares no matching"
    worst: dict[str, float] = dict.fromkeys(kinds, 0.0)
    sizes = size_names()
    for size in sizes:
        base = configure(size_preset(size))
        spec = resolve(pair.expr, base).spec
        for kind in kinds:
            want = _counted(base, pair.topology, kind)
            got = _counted(spec, pair.topology, kind)
            rel = got / want - 1.0 if want else math.inf
            if abs(rel) > MATCH_TOLERANCE:
                what = "parameters" if kind == "params" else "FLOPs per token"
                return "failed", (f"declares matches={kind!r} but has {got:,.0f} {what} against the baseline's "
                                  f"{want:,.0f} ({rel:+.1%}) at size {size!r} ({pair.topology})")
            worst[kind] = max(worst[kind], abs(rel))
    return "passed", "; ".join(f"{k} within {worst[k]:.2%} of the baseline" for k in kinds) + f" at {', '.join(sizes)}"


# -- task data ----------------------------------------------------------------------------------
def _data_ready(task: Any) -> tuple[bool, str]:
    """Whether the task's data can be used without fetching anything (preparing it if so)."""
    from modtransfer.core.task import Task

    probe = getattr(task, "is_prepared", None)
    cache = getattr(type(task), "cache_file", None)
    if callable(probe):
        ready = bool(probe())
    elif cache is not None:
        path = task.cache_file
        ready = isinstance(path, Path) and path.exists()
    else:
        ready = True  # no cache to look at: the task's prepare() is tried, a UserError falls back
    if not ready:
        return False, f"task data not cached under {task.cache_dir}"
    if type(task).prepare is not Task.prepare:
        try:
            task.prepare()
        except UserError as exc:
            return False, f"task data unavailable ({exc})"
    return True, ""


def _fallback_spec(task: Any, spec: ModelSpec) -> ModelSpec:
    if task.has_vocab:
        return spec.replace(vocab_size=FALLBACK_VOCAB, in_features=0, out_features=0)
    return spec.replace(vocab_size=0, in_features=FALLBACK_FEATURES[0], out_features=FALLBACK_FEATURES[1])


def _configurer(task: Any, ready: bool) -> tuple[Callable[[ModelSpec], ModelSpec], str]:
    """A function filling a spec's task fields, and a note when it is not the task's own."""
    if ready:
        try:
            task.configure_spec(CONTRACT_SPEC)
        except (UserError, NotImplementedError) as exc:
            note = f"configure_spec failed ({exc}); "
        else:
            return task.configure_spec, ""
    else:
        note = ""
    sizes = (f"vocab_size={FALLBACK_VOCAB}" if task.has_vocab
             else f"in_features={FALLBACK_FEATURES[0]}, out_features={FALLBACK_FEATURES[1]}")
    return (lambda spec: _fallback_spec(task, spec)), note + f"spec filled by the contract ({sizes})"


# -- the suite ----------------------------------------------------------------------------------
def _load_registries() -> None:
    from modtransfer.core.components import ensure_builtin_components

    ensure_builtin_components()
    import modtransfer.tasks  # noqa: F401  (registers the built-in tasks)


def run_contract(
    variant_expr: str, tasks: list[str] | None = None, *, seed: int = 0,
    cache_dir: str | Path | None = None, use_data: bool = True,
) -> list[CheckResult]:
    """Run every check of the contract for ``variant_expr`` on each task (default: all tasks).

    Unknown variant or task names and variants that cannot be combined raise
    :class:`~modtransfer.core.errors.UserError`; everything a variant gets wrong is a ``failed``
    result. A task the variant does not apply to gives one ``skipped`` result with the reason.
    ``use_data=False`` never touches task data (synthetic batches everywhere);
    ``cache_dir`` is passed to each task (where it looks for prepared data).
    """
    from modtransfer.core.task import TASKS
    from modtransfer.core.variant import canonical

    _load_registries()
    name = canonical(variant_expr)
    task_names = TASKS.select(tasks) if tasks is not None else TASKS.names()
    results: list[CheckResult] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add synchronisation
    try:
        for task_name in task_names:
            results.extend(_run_pair(name, task_name, seed=seed, cache_dir=cache_dir, use_data=use_data))
    finally:
        torch.set_num_threads(threads)
    return results


def _run_pair(expr: str, task_name: str, *, seed: int, cache_dir: str | Path | None,
              use_data: bool) -> list[CheckResult]:
    from modtransfer.core.task import TASKS
    from modtransfer.core.variant import resolve

    out: list[CheckResult] = []

    def add(check: str, outcome: Outcome) -> None:
        out.append(CheckResult(expr, task_name, check, outcome[0], outcome[1]))

    task = TASKS.get(task_name)(cache_dir=cache_dir)
    reason = _requirements(expr).missing(task.capabilities)
    if reason is not None:  # decided from the declarations, before the variant's code runs
        add("applicable", ("skipped", f"{reason} ('{task_name}' offers {', '.join(sorted(task.capabilities))})"))
        return out
    ready, data_note = _data_ready(task) if use_data else (False, "synthetic data requested")
    configure, spec_note = _configurer(task, ready)
    try:
        resolved = resolve(expr, configure(CONTRACT_SPEC))
    except ConflictError:
        raise
    except Exception as exc:  # a variant that cannot even produce a valid spec
        add("resolve", ("failed", _error(exc)))
        return out

    batches: Iterator[Any] | None = None
    if ready:
        try:
            batches = task.train_batches(seed, BATCH)
            pair = _Pair(expr, task, resolved.spec, resolved, seed, batches, data_note)
        except Exception as exc:
            add("loss", ("failed", f"task.train_batches failed: {_error(exc)}"))
            return out
    else:
        pair = _Pair(expr, task, resolved.spec, resolved, seed, None, data_note)

    try:
        model = pair.build(seed)
        loss_a = pair.loss(model)
    except Exception as exc:
        add("build", ("failed", _error(exc)))
        return out
    source = (f"task.loss on a real '{task_name}' batch" if pair.real_batch is not None
              else f"synthetic batch ({data_note})")

    def forward() -> Outcome:
        status, detail = _check_forward(pair, model)
        return status, f"{detail}; {spec_note}" if spec_note else detail

    def loss() -> Outcome:
        value = loss_a.detach()
        if not bool(torch.isfinite(value).all()):
            raise NonFinite(f"the loss is {value.flatten()[:4].tolist()} from {source}")
        if value.numel() != 1:
            return "failed", f"the loss has shape {tuple(value.shape)}, not a scalar, from {source}"
        return "passed", f"{float(value):.4g} from {source}"

    def gradients() -> Outcome:
        if loss_a.numel() != 1:
            return "skipped", "the loss is not a scalar"
        return _check_gradients(pair, model, loss_a)

    def determinism() -> Outcome:
        loss_b = pair.loss(pair.build(seed)).detach()  # with autograd on, as loss_a: same kernels
        return _check_determinism(loss_a, loss_b)

    checks: dict[str, Callable[[], Outcome]] = {
        "forward": forward, "meta": lambda: _check_meta(pair), "loss": loss, "gradients": gradients,
        "causality": lambda: _check_causality(pair, model), "padding": lambda: _check_padding(pair, model),
        "determinism": determinism, "state_dict": lambda: _check_state_dict(pair, model),
        "matching": lambda: _check_matching(pair, configure),
    }
    stopped = ""
    for check in CHECKS:
        if stopped:
            add(check, ("skipped", f"not run: {stopped}"))
            continue
        try:
            add(check, checks[check]())
        except NonFinite as exc:
            add(check, ("failed", str(exc)))
            stopped = f"the {check} check met non-finite outputs"
        except Exception as exc:
            add(check, ("failed", _error(exc)))
    return out


def _requirements(expr: str) -> Any:
    """The declared requirements of a variant expression, without applying its patches."""
    from modtransfer.core.variant import VARIANTS, ResolvedVariant, parse_variant

    parts = parse_variant(expr)
    metas = [VARIANTS.entry(p.name).meta for p in parts]
    return ResolvedVariant(
        name=expr, spec=CONTRACT_SPEC, parts=parts, slots=[m["slot"] for m in metas],
        requires=frozenset().union(*(m["requires"] for m in metas)),
        requires_any=[m["requires_any"] for m in metas if m["requires_any"]],
    )


def _error(exc: BaseException) -> str:
    """One line: where in a plugin it was raised (when it was), the exception and its first line."""
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    where = plugin_frame(exc)
    return f"{where}: {message}" if where else message


# -- where a plugin failed ----------------------------------------------------------------------
def _plugin_files() -> dict[Path, list[tuple[str, str, Any]]]:
    """Files holding plugin code -> the registered things each defines, as ``(kind, name, obj)``.

    Registered objects not defined by the package, the files of their own (non-library) base
    classes, and every module loaded with ``--plugin``.
    """
    from modtransfer.core.variant import plugin_entries, plugin_source_files

    files: dict[Path, list[tuple[str, str, Any]]] = {}
    for kind, name, obj in plugin_entries():
        for f in plugin_source_files(obj):
            files.setdefault(f, []).append((kind, name, obj))
    for modname, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if modname.startswith("modtransfer_plugin_") and path:
            files.setdefault(Path(path).resolve(), [])
    return files


def _defines(obj: Any, code: Any, path: Path) -> bool:
    """Whether the code object ``code`` (from ``path``) belongs to ``obj``: a method of the class
    or of one of its plugin base classes, the function itself, or a function nested in it."""
    from modtransfer.core.variant import source_file

    qual = getattr(code, "co_qualname", code.co_name)
    if isinstance(obj, type):
        return any(qual.startswith(c.__qualname__ + ".") for c in obj.__mro__ if source_file(c) == path)
    target = getattr(obj, "__func__", obj)
    own = getattr(target, "__qualname__", None)
    return own is not None and (qual == own or qual.startswith(own + ".<locals>."))


def plugin_frame(exc: BaseException) -> str | None:
    """Where in plugin code ``exc`` was raised, e.g. ``"ffn 'my_ffn' (plugin /x.py:42 in forward)"``.

    The deepest traceback frame in a plugin's file gives the place; the registered component,
    variant or task it belongs to (searched from that frame outwards) gives the interface the
    harness called it through. Chained exceptions are followed (a ``UserError`` raised about a
    plugin's own error still points at it). None when no frame is in plugin code: the error is
    the harness's, or a built-in's.
    """
    files = _plugin_files()
    if not files:
        return None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        hits = []
        tb = current.__traceback__
        while tb is not None:
            path = Path(tb.tb_frame.f_code.co_filename).resolve()
            if path in files:
                hits.append((path, tb.tb_frame.f_code, tb.tb_lineno))
            tb = tb.tb_next
        if hits:
            path, code, line = hits[-1]
            label = next((f"{kind} {name!r} " for p, c, _ in reversed(hits) for kind, name, obj in files[p]
                          if _defines(obj, c, p)), "")
            return f"{label}(plugin {path}:{line} in {code.co_name})"
        current = current.__cause__ or current.__context__
    return None


# -- reporting ----------------------------------------------------------------------------------
def summary(results: list[CheckResult]) -> str:
    """``"N passed, M failed, K skipped"``."""
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    return f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "failed"]


def format_results(results: list[CheckResult]) -> str:
    """A plain-text table (variant, task, check, status, detail) and the summary line."""
    header = ("variant", "task", "check", "status", "detail")
    rows = [(r.variant, r.task, r.check, r.status.upper() if r.status == "failed" else r.status,
             " ".join(r.detail.split())) for r in results]
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True)) + "  " + cells[4]

    lines = [line(header), line(tuple("-" * w for w in widths) + ("-" * 6,))]
    lines += [line(row) for row in rows]
    lines.append(summary(results))
    return "\n".join(lines)
