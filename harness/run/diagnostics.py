"""Diagnostics that explain a cell's result: what the optimiser and the layers did while it trained.

Every ``budget.diag_every`` steps (and at step 0) the :class:`Recorder` measures, on the
training step itself (no extra forward or backward pass):

* ``grad_norm``: the gradient's L2 norm, global (layer ``""``) and per layer, before clipping;
* ``update_ratio``: ||W_after - W_before|| / ||W_before|| per layer, over that step's update
  (the update-to-weight ratio whose healthy size is about 1e-3; Karpathy, "A Recipe for Training
  Neural Networks", 2019; You et al. 2017, LARS, arXiv 1708.03888, scale updates by it);
* ``attn_entropy`` (``attn_entropy_cross`` for cross-attention): the entropy of each query's
  attention distribution divided by log(number of keys it may see), mean over heads, queries and
  examples; 0 is one-hot, 1 uniform (the collapse measure of Zhai et al. 2023, "Stabilizing
  Transformer Training by Preventing Attention Entropy Collapse", arXiv 2303.06296);
* ``resid_rms``: the root mean square of the residual stream after each block (a stream that
  grows without bound, Xiong et al. 2020, arXiv 2002.04745);
* ``ffn_zero_frac`` and ``ffn_dead_frac``: the share of exact zeros after the FFN's activation,
  and the share of hidden units that are zero at every position of the batch (dead ReLUs,
  Lu et al. 2019, "Dying ReLU and Initialization", arXiv 1903.06733);
* ``hidden_cos`` and ``hidden_erank``: over the final hidden states of each stack (positions and
  examples pooled), the mean pairwise cosine similarity, and the effective rank of the centred
  states (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality"):
  exp of the entropy of the normalised singular values; at most 1 when every state lies on one
  line, as after a LayerNorm over two features (representation collapse).

Attention probabilities are recomputed from the module's own projections, only on diagnostic
steps (forward hooks are installed for that step and removed after it), so ordinary steps keep
the fused kernel. Per-layer gradient norms are also kept, on the device and without a host
sync, for the last :data:`WATCH_STEPS` steps, so that a diverged cell can name the layer whose
gradient blew up first (:func:`modtransfer.run.events.divergence_event`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from modtransfer.core.task import Budget, Task
    from modtransfer.variants.baseline.attention import AttentionBase

#: steps of per-layer gradient norms kept on the device (covers a divergence's patience + one flush)
WATCH_STEPS = 64
#: hidden states sampled for the collapse statistics (pairwise cosines are O(n^2))
COLLAPSE_SAMPLE = 256
#: examples of the batch whose attention weights are recomputed for the entropy
ENTROPY_SAMPLE = 4


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: ``encoder.0`` for ``encoder.blocks.0.attn...``, else its
    first one or two name parts (``embedding``, ``out_proj``, ``decoder.final_norm``)."""
    parts = name.split(".")
    if parts[0] in ("encoder", "decoder") and len(parts) > 2:
        return f"{parts[0]}.{parts[2]}" if parts[1] == "blocks" else f"{parts[0]}.{parts[1]}"
    return parts[0]


# -- measurements (pure functions of tensors) ----------------------------------------------------
@torch.no_grad()
def collapse_stats(h: Tensor, sample: int = COLLAPSE_SAMPLE) -> tuple[float, float]:
    """(mean pairwise cosine similarity, effective rank of the centred rows) of states ``h`` [N, D].

    Rows are taken evenly when there are more than ``sample``. The effective rank is 0 when
    the rows are all equal (no variation at all).
    """
    h = h.reshape(-1, h.shape[-1]).float()
    if h.shape[0] > sample:
        h = h[torch.linspace(0, h.shape[0] - 1, sample, device=h.device).long()]
    n = h.shape[0]
    unit = F.normalize(h, dim=-1)
    sim = unit @ unit.T
    cos = float((sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1))
    s = torch.linalg.svdvals(h - h.mean(dim=0, keepdim=True))
    total = float(s.sum())
    if total <= 1e-6 * max(float(h.norm()), 1e-12):
        return cos, 0.0
    p = s / s.sum()
    return cos, float(torch.exp(torch.special.entr(p).sum()))


@torch.no_grad()
def attention_entropy(module: AttentionBase, x: Tensor, kv: Tensor | None, pad_mask: Tensor | None,
                      bias: Tensor | None, position: Any) -> Tensor:
    """Mean normalised entropy (0 one-hot .. 1 uniform) of an ``AttentionBase`` module's weights.

    Recomputed from ``module.project``/``module.scores`` with the same masks and position rotation
    as its forward (``position``: the stack's position module, read for ``rotates``/``rotate``), on the first
    :data:`ENTROPY_SAMPLE` examples; queries that may see a single key are left out (their entropy is 0 by force).
    """
    from modtransfer.variants.baseline.attention import additive_mask

    n = ENTROPY_SAMPLE  # the first examples of the batch: an estimate at a fraction of the cost
    x, kv = x[:n], kv[:n] if kv is not None else None
    pad_mask = pad_mask[:n] if pad_mask is not None else None
    q, k, _ = module.project(x, kv)
    if position is not None and getattr(position, "rotates", False) and not module.cross:
        q, k = position.rotate(q, k)
    logits = module.scores(q, k).float()
    mask = additive_mask(q.shape[2], k.shape[2], causal=module.causal, pad_mask=pad_mask,
                         bias=None if module.cross else bias, device=q.device, dtype=torch.float32)
    p = torch.softmax(logits + mask, dim=-1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)             # [B, H, T]; 0 log 0 = 0
    seen = torch.isfinite(mask).sum(-1).expand_as(entropy)        # keys each query may see
    keep = seen > 1
    if not bool(keep.any()):
        return torch.full((), float("nan"), device=q.device)
    return (entropy[keep] / seen[keep].float().log()).mean()


@torch.no_grad()
def zero_stats(a: Tensor) -> tuple[Tensor, Tensor]:
    """(share of exact zeros, share of units zero at every position) of activations [..., units]."""
    zero = a.reshape(-1, a.shape[-1]) == 0
    return zero.float().mean(), zero.all(dim=0).float().mean()


def _rms(x: Tensor) -> Tensor:
    return x.detach().float().pow(2).mean().sqrt()


# -- the recorder ----------------------------------------------------------------------------------
class Recorder:
    """Measures a model's training every ``every`` steps; ``records`` is the list of
    ``{"step", "name", "layer", "value"}`` dicts that the cell's row carries.

    Drive it from a training loop: :meth:`begin` before the forward, :meth:`after_backward`
    before the optimiser step (and any clipping), :meth:`end` after it. ``every`` 0 turns it off.
    """

    def __init__(self, model: nn.Module, every: int) -> None:
        self.model, self.every = model, every
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.layers = list(dict.fromkeys(layer_of(n) for n, _ in named))
        self._group = torch.tensor([self.layers.index(layer_of(n)) for n, _ in named], dtype=torch.long)
        self.records: list[dict[str, Any]] = []
        self.skipped: set[str] = set()  # measurements that raised, dropped
        self._step: int | None = None
        self._hooks: list[Any] = []
        self._pending: list[tuple[str, str, Tensor]] = []
        self._before: list[Tensor] = []
        self._watch: Tensor | None = None
        self._watch_steps: list[int] = [-1] * WATCH_STEPS

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @property
    def current_step(self) -> int | None:
        """The diagnostic step in progress, or None."""
        return self._step

    # -- the three moments of a step ---------------------------------------------------------------
    def begin(self, step: int) -> None:
        self._step = step if self.due(step) else None
        if self._step is not None:
            self._install_hooks()

    def after_backward(self, step: int) -> None:
        """Per-layer gradient norms (every step, on the device) and, on a diagnostic step, the
        norms as records and a copy of the weights for the update ratio."""
        if self.every <= 0:
            return
        norms = self._layer_norms([p.grad for p in self.params])
        if self._watch is None:
            self._watch = torch.zeros(WATCH_STEPS, len(self.layers), device=norms.device)
        self._watch[step % WATCH_STEPS] = norms
        self._watch_steps[step % WATCH_STEPS] = step
        if self._step is None:
            return
        self._pending.append(("grad_norm", "", norms.pow(2).sum().sqrt()))
        self._pending += [("grad_norm", layer, norms[i]) for i, layer in enumerate(self.layers)]
        self._before = [p.detach().clone() for p in self.params]

    def end(self) -> dict[str, float]:
        """Finish a diagnostic step: update ratios, hooks removed, one host read. Returns the
        step's values by ``name/layer`` (empty on other steps)."""
        if self._step is None:
            return {}
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._before:
            after = [p.detach() for p in self.params]
            moved = self._layer_norms(torch._foreach_sub(after, self._before))
            size = self._layer_norms(self._before)
            ratio = moved / size.clamp_min(1e-12)
            self._pending += [("update_ratio", layer, ratio[i]) for i, layer in enumerate(self.layers)]
            self._before = []
        step, self._step = self._step, None
        return self._collect(step)

    # -- internals ---------------------------------------------------------------------------------
    def _layer_norms(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Per layer, the L2 norm of ``tensors`` (one per parameter; None counts as zero)."""
        device = self.params[0].device if self.params else torch.device("cpu")
        if self._group.device != device:
            self._group = self._group.to(device)
        out = torch.zeros(len(self.layers), device=device)
        present = [t for t in tensors if t is not None]
        if not present:
            return out
        idx = self._group
        if len(present) < len(tensors):  # parameters without a gradient this step (unused experts)
            idx = idx[torch.tensor([i for i, t in enumerate(tensors) if t is not None], device=device)]
        sq = torch.stack(torch._foreach_norm(present)).float().pow(2)
        return out.index_add_(0, idx, sq).sqrt()

    def _collect(self, step: int) -> dict[str, float]:
        if not self._pending:
            return {}
        values = torch.stack([t.detach().float().reshape(()) for _, _, t in self._pending]).tolist()
        sums: dict[tuple[str, str], list[float]] = defaultdict(list)
        for (name, layer, _), v in zip(self._pending, values, strict=True):
            sums[(name, layer)].append(v)
        self._pending = []
        out = {}
        for (name, layer), vs in sums.items():
            v = sum(vs) / len(vs)  # a shared block (or a second forward) is averaged over its calls
            value = v if math.isfinite(v) else None
            self.records.append({"step": step, "name": name, "layer": layer, "value": value})
            out[f"diag/{name}" + (f"/{layer}" if layer else "")] = v
        return out

    def watched(self) -> list[dict[str, Any]]:
        """The last :data:`WATCH_STEPS` steps' per-layer gradient norms, as ``grad_norm_step`` records."""
        if self._watch is None:
            return []
        table = self._watch.tolist()
        out = []
        for slot, step in sorted(enumerate(self._watch_steps), key=lambda s: s[1]):
            if step >= 0:
                out += [{"step": step, "name": "grad_norm_step", "layer": layer,
                         "value": v if math.isfinite(v) else None} for layer, v in zip(self.layers, table[slot], strict=True)]
        return out

    def _add(self, module: nn.Module, fn: Any, with_kwargs: bool = False) -> None:
        """Register a forward hook that can never fail the training step: a measurement that
        raises (a plugin module of an unexpected shape) is dropped and named in ``skipped``."""
        def safe(*args: Any) -> None:
            try:
                with torch.no_grad():
                    fn(*args)
            except Exception as exc:  # the cell must train whatever a measurement does
                self.skipped.add(f"{type(module).__name__}: {type(exc).__name__}: {exc}"[:200])
        self._hooks.append(module.register_forward_hook(safe, with_kwargs=with_kwargs))

    def _install_hooks(self) -> None:
        for stack_name in ("encoder", "decoder"):
            stack = getattr(self.model, stack_name, None)
            if stack is None or not hasattr(stack, "blocks"):
                continue
            self._add(stack, self._stack_hook(stack_name), with_kwargs=True)
            for i, block in enumerate(stack.blocks):
                layer = f"{stack_name}.{i}"
                self._add(block, self._rms_hook(layer))
                for part, name in (("attn", "attn_entropy"), ("cross", "attn_entropy_cross")):
                    self._hook_attention(getattr(block, part, None), layer, name)
                self._hook_ffn(getattr(getattr(block, "ffn", None), "sublayer", None), layer)

    def _stack_hook(self, stack_name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
            pad = args[1] if len(args) > 1 else kwargs.get("pad_mask")
            h = out.detach()
            h = h[~pad] if isinstance(pad, Tensor) and pad.shape == h.shape[:2] else h.reshape(-1, h.shape[-1])
            cos, erank = collapse_stats(h)
            dev = h.device
            self._pending += [("hidden_cos", stack_name, torch.tensor(cos, device=dev)),
                              ("hidden_erank", stack_name, torch.tensor(erank, device=dev))]
        return hook

    def _rms_hook(self, layer: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            self._pending.append(("resid_rms", layer, _rms(out)))
        return hook

    def _hook_attention(self, wrapper: nn.Module | None, layer: str, name: str) -> None:
        from modtransfer.variants.baseline.attention import AttentionBase

        module = getattr(wrapper, "sublayer", None)
        if not isinstance(module, AttentionBase) or type(module).forward is not AttentionBase.forward:
            return  # an attention with its own forward (linear attention) has no softmax weights to read

        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
            x = args[0] if args else kwargs["x"]
            kv = args[1] if len(args) > 1 else kwargs.get("kv")
            value = attention_entropy(module, x, kv, kwargs.get("pad_mask"), kwargs.get("bias"), kwargs.get("position"))
            self._pending.append((name, layer, value))
        self._add(module, hook, with_kwargs=True)

    def _hook_ffn(self, ffn: nn.Module | None, layer: str) -> None:
        """Zeros after the activation: on ``w1``'s output (dense), the gate half of ``w_in`` (gated),
        else on the input of the FFN's output layer (where dropout adds zeros of its own)."""
        if ffn is None:
            return
        act = getattr(ffn, "act", None)

        def record(a: Tensor) -> None:
            zero, dead = zero_stats(a.detach())
            self._pending += [("ffn_zero_frac", layer, zero), ("ffn_dead_frac", layer, dead)]

        w1, w_in = getattr(ffn, "w1", None), getattr(ffn, "w_in", None)
        if act is not None and isinstance(w1, nn.Linear):
            self._add(w1, lambda m, a, out: record(act(out.detach())))
        elif act is not None and isinstance(w_in, nn.Linear) and (d_ff := getattr(ffn, "d_ff", None)) is not None:
            self._add(w_in, lambda m, a, out: record(act(out.detach()[..., :d_ff])))
        else:
            from modtransfer.variants.baseline.residual import output_layers

            for m in output_layers(ffn)[:1]:
                self._add(m, lambda m, a, out: record(a[0]))


# -- the cell's side: Lightning callback, W&B, the row ---------------------------------------------
def plateau_level(task: Task, metrics: dict[str, Any]) -> tuple[float, float] | None:
    """(the trivial score in training-loss units, the task's ``plateau_fraction``), or None.

    Only for a task that declares a plateau. Its ``trivial_loss()`` when it defines one; else
    the trivial score itself when the primary metric is ``val_loss``; else the trivial score
    scaled by ``val_loss / primary`` of the final evaluation (a loss proportional to the metric,
    as the regression's 0.5 x MSE).
    """
    fraction = getattr(task, "plateau_fraction", None)
    if fraction is None:
        return None
    own = getattr(task, "trivial_loss", None)
    if callable(own):
        return float(own()), float(fraction)
    trivial = float(task.trivial_score())
    if task.primary_metric == "val_loss":
        return trivial, float(fraction)
    value, loss = metrics.get(task.primary_metric), metrics.get("val_loss")
    if isinstance(value, int | float) and isinstance(loss, int | float) and value > 0:
        return trivial * loss / value, float(fraction)
    return None


class CellDiagnostics:
    """What :func:`modtransfer.run.cell.run_cell` attaches to a cell: ``callbacks`` for the Trainer,
    and :meth:`result`, the ``diagnostics`` and ``events`` keys of the cell's row."""

    def __init__(self, model: nn.Module, budget: Budget) -> None:
        self.recorder = Recorder(model, int(getattr(budget, "diag_every", 0) or 0))
        self.logger: Any = None
        self.callbacks = [_callback(self)] if self.recorder.every > 0 else []

    def result(self, row: dict[str, Any], task: Task) -> dict[str, Any]:
        """The row's ``diagnostics`` and ``events`` (also in the W&B summary). Nothing here can fail
        the cell: a problem becomes a ``diagnostics_error`` event."""
        from modtransfer.run.events import detect, event, summary

        records = list(self.recorder.records)
        if row.get("status") == "diverged":
            records += self.recorder.watched()
        problems = [f"measurement dropped: {s}" for s in sorted(self.recorder.skipped)]
        try:
            events = detect(row, records, plateau_level(task, row.get("metrics") or {}))
        except Exception as exc:  # a task's trivial score or a detector's bug
            events = []
            problems.append(f"{type(exc).__name__}: {exc}")
        events += [event("diagnostics_error", None, None, p) for p in problems]
        if self.logger is not None:
            try:
                self.logger.experiment.summary.update({"events": summary(events), "n_events": len(events)})
            except Exception as exc:
                events.append(event("diagnostics_error", None, None, f"W&B summary: {exc}"))
        return {"diagnostics": records, "events": events}


def _callback(owner: CellDiagnostics) -> Any:
    from lightning.pytorch.callbacks import Callback

    rec = owner.recorder

    class DiagnosticsCallback(Callback):
        """Drives the :class:`Recorder` from Lightning's hooks and logs each diagnostic step to W&B
        on ``trainer/global_step``."""

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            owner.logger = trainer.logger

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            rec.begin(trainer.global_step)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            rec.after_backward(trainer.global_step)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = rec.current_step
            values = rec.end()
            if values and trainer.logger is not None:
                trainer.logger.log_metrics(values, step=step)

    return DiagnosticsCallback()
