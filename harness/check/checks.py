"""The checks of the contract suite, one function per check (see :mod:`modtransfer.check.contract`).

Each returns an ``Outcome``, ``(status, detail)``; a non-finite output raises :class:`NonFinite`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

from modtransfer.check.pair import (
    TOL,
    NonFinite,
    Pair,
    finite,
    max_diff,
    mode_pass,
    output_head,
    replace_where,
    run_stack,
)
from modtransfer.core.model import IGNORE_INDEX, Transformer
from modtransfer.core.spec import ModelSpec

Status = Literal["passed", "failed", "skipped"]
Outcome = tuple[Status, str]

GRAD_RETRIES = 3      # extra batches given to parameters without a gradient
MATCH_TOLERANCE = 0.02




def check_forward(pair: Pair, model: Transformer) -> Outcome:
    spec, inp = pair.spec, pair.inputs
    model.eval()
    with torch.no_grad():
        h, memory = run_stack(model, pair.topology, inp)
        b = inp.x.shape[0]
        length = inp.y.shape[1] if inp.y is not None else inp.x.shape[1]
        if tuple(h.shape) != (b, length, spec.d_model):
            return "failed", f"hidden states have shape {tuple(h.shape)}, expected {(b, length, spec.d_model)}"
        if memory is not None and tuple(memory.shape) != (b, inp.x.shape[1], spec.d_model):
            return "failed", f"encoder memory has shape {tuple(memory.shape)}, expected {(b, inp.x.shape[1], spec.d_model)}"
        pad = inp.y_pad if inp.y is not None else inp.x_pad
        real = ~pad if pair.padded and pad is not None else torch.ones(b, length, dtype=torch.bool)
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
            gap = max_diff(want[keep], nll[keep])
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
        if aux.numel() != 1 or not bool(torch.isfinite(aux).all()):
            return "failed", f"aux_loss() is not a finite scalar: {aux}"
    return "passed", f"hidden {tuple(h.shape)}, {head}"


def check_gradients(pair: Pair, model: Transformer, loss: Tensor) -> Outcome:
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


def _decode_head(model: Transformer, tokens: Tensor, memory: Tensor | None, memory_pad: Tensor | None,
                 pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
    h = model.decode(tokens, pad, memory, memory_pad)
    return h, output_head(model, h)


def check_causality(pair: Pair, model: Transformer) -> Outcome:
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
        changed.append(replace_where(tokens, future, spec, gen))

    def run(train: bool, target: Tensor) -> tuple[Tensor, Tensor]:
        def fn() -> tuple[Tensor, Tensor]:
            memory = model.encode(inp.x, inp.x_pad) if pair.topology == "encoder_decoder" else None
            return _decode_head(model, target, memory, inp.x_pad if memory is not None else None)
        return mode_pass(model, train, fn)

    for train in (False, True):
        mode = "training" if train else "evaluation"
        h0, out0 = run(train, tokens)
        finite(h0, f"decoder states ({mode} mode)")
        finite(out0, f"decoder outputs ({mode} mode)")
        for t, other in zip(cuts, changed, strict=True):
            h1, out1 = run(train, other)
            for what, a, b in (("hidden states", h0, h1), ("log-probs" if model.has_vocab else "outputs", out0, out1)):
                gap = max_diff(a[:, : t + 1], b[:, : t + 1])
                if gap > TOL:
                    return "failed", (f"{what} at positions <= {t} changed (scaled diff {gap:.2e}) in {mode} mode "
                                      f"when only tokens after {t} of {n} changed: the decoder sees the future")
    return "passed", f"positions <= t unchanged for t in {cuts} of {n}, in evaluation and training mode"


def check_padding(pair: Pair, model: Transformer) -> Outcome:
    if not pair.padded:
        return "skipped", "the task has no padding"
    for train in (False, True):
        outcome = _padding_pass(pair, model, train)
        if outcome is not None:
            return outcome
    checked = ["decoder"] if pair.topology == "decoder" else ["encoder"] if pair.topology == "encoder" else [
        "encoder", "memory", "decoder"]
    return "passed", f"real positions ignore padded tokens ({', '.join(checked)}; evaluation and training mode)"


def _padding_pass(pair: Pair, model: Transformer, train: bool) -> Outcome | None:
    """A failure of the padding check in one mode, or None."""
    spec, inp = pair.spec, pair.inputs
    gen = torch.Generator().manual_seed(pair.seed + 11)
    mode = "training" if train else "evaluation"
    assert inp.x_pad is not None
    x2 = replace_where(inp.x, inp.x_pad, spec, gen)
    real_x = ~inp.x_pad

    def differs(what: str, a: Tensor, b: Tensor, real: Tensor, why: str) -> Outcome | None:
        finite(a[real], f"{what} at real positions ({mode} mode)")
        if (gap := max_diff(a[real], b[real])) > TOL:
            return "failed", f"{what} {why} (scaled diff {gap:.2e}, {mode} mode)"
        return None

    if pair.topology == "decoder":
        h1, o1 = mode_pass(model, train, lambda: _decode_head(model, inp.x, None, None, inp.x_pad))
        h2, o2 = mode_pass(model, train, lambda: _decode_head(model, x2, None, None, inp.x_pad))
        for what, a, b in (("decoder states", h1, h2), ("decoder outputs", o1, o2)):
            if bad := differs(what, a, b, real_x, "at real positions depend on padded tokens"):
                return bad
        return None
    if pair.topology == "encoder":
        m1, o1 = mode_pass(model, train, lambda: _encode_head(model, inp.x, inp.x_pad))
        m2, o2 = mode_pass(model, train, lambda: _encode_head(model, x2, inp.x_pad))
        for what, a, b in (("encoder states", m1, m2), ("encoder outputs", o1, o2)):
            if bad := differs(what, a, b, real_x, "at real positions depend on padded tokens"):
                return bad
        return None
    y, y_pad = inp.y, inp.y_pad
    assert y is not None and y_pad is not None
    real_y = ~y_pad
    y2 = replace_where(y, y_pad, spec, gen)

    def seq2seq(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory = model.encode(x, inp.x_pad)
        return (memory, *_decode_head(model, target, memory, inp.x_pad, y_pad))

    m1, h1, o1 = mode_pass(model, train, lambda: seq2seq(inp.x, y))
    m2, h2, o2 = mode_pass(model, train, lambda: seq2seq(x2, y))
    if bad := differs("encoder states", m1, m2, real_x, "at real positions depend on padded tokens"):
        return bad
    for what, a, b in (("decoder states", h1, h2), ("decoder log-probs", o1, o2)):
        if bad := differs(what, a, b, real_y, "depend on padded source tokens through memory"):
            return bad
    _, h3, o3 = mode_pass(model, train, lambda: seq2seq(inp.x, y2))
    for what, a, b in (("decoder states", h1, h3), ("decoder log-probs", o1, o3)):
        if bad := differs(what, a, b, real_y, "at real positions depend on padded target tokens"):
            return bad
    return None


def _encode_head(model: Transformer, x: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    m = model.encode(x, pad)
    return m, output_head(model, m)


def check_meta(pair: Pair) -> Outcome:
    """Build and run the model on ``meta`` exactly as ``run`` does to count parameters and FLOPs."""
    from modtransfer.core.model import count_flops, count_params

    config = getattr(pair.task, "config", {}) or {}
    seq = int(config.get("seq_len") or config.get("max_len") or pair.spec.max_len)
    params = count_params(pair.spec, pair.topology)
    flops = count_flops(pair.spec, pair.topology, seq)
    return "passed", f"{params:,} parameters and {flops:,.0f} FLOPs per token counted on meta (sequence {seq})"


def check_determinism(loss_a: Tensor, loss_b: Tensor) -> Outcome:
    a, b = float(loss_a.detach()), float(loss_b.detach())
    if a == b:
        return "passed", f"loss {a:.6g} twice from the same seed"
    return "failed", f"the same seed gave losses {a!r} and {b!r}"


def check_state_dict(pair: Pair, model: Transformer) -> Outcome:
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
        h1, _ = run_stack(model, pair.topology, pair.inputs)
        h2, _ = run_stack(fresh, pair.topology, pair.inputs)
        gaps = [max_diff(h1, h2), max_diff(output_head(model, h1), output_head(fresh, h2))]
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


def check_matching(pair: Pair, configure: Callable[[ModelSpec], ModelSpec]) -> Outcome:
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
