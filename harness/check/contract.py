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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modtransfer.check.checks import (
    Outcome,
    Status,
    check_causality,
    check_determinism,
    check_forward,
    check_gradients,
    check_matching,
    check_meta,
    check_padding,
    check_state_dict,
)
from modtransfer.check.pair import BATCH, NonFinite, Pair
from modtransfer.check.plugin_errors import error_line
from modtransfer.core.errors import ConflictError, UserError
from modtransfer.core.spec import ModelSpec

if TYPE_CHECKING:
    from modtransfer.core.model import Transformer
    from modtransfer.core.task import Task

#: Checks in the order they are reported.
CHECKS = ("forward", "meta", "loss", "gradients", "causality", "padding", "determinism", "state_dict", "matching")

#: The model the contract builds: small enough that every pair takes a fraction of a second.
CONTRACT_SPEC = ModelSpec(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64)
#: Vocabulary and feature sizes used when a task cannot configure the spec without its data.
FALLBACK_VOCAB = 97
FALLBACK_FEATURES = (8, 4)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of one (variant, task) pair."""

    variant: str
    task: str
    check: str
    status: Status
    detail: str = ""



# -- task data ----------------------------------------------------------------------------------
def _data_ready(task: Task) -> tuple[bool, str]:
    """Whether the task's data can be used without fetching anything (preparing it if so)."""
    from modtransfer.core.task import Task

    probe = getattr(task, "is_prepared", None)
    cache = getattr(type(task), "cache_file", None)
    if callable(probe):
        ready = bool(probe())
    elif cache is not None:
        path = getattr(task, "cache_file", None)
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


def _fallback_spec(task: Task, spec: ModelSpec) -> ModelSpec:
    if task.has_vocab:
        return spec.replace(vocab_size=FALLBACK_VOCAB, in_features=0, out_features=0)
    return spec.replace(vocab_size=0, in_features=FALLBACK_FEATURES[0], out_features=FALLBACK_FEATURES[1])


def _configurer(task: Task, ready: bool) -> tuple[Callable[[ModelSpec], ModelSpec], str]:
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
    from modtransfer.builtins import load_builtins

    load_builtins()
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
    """Every check of one (variant, task) pair; a pair that cannot even be set up gives one failed result."""
    from modtransfer.core.task import TASKS

    task = TASKS.get(task_name)(cache_dir=cache_dir)
    reason = _requirements(expr).missing(task.capabilities)
    if reason is not None:  # decided from the declarations, before the variant's code runs
        offered = ", ".join(sorted(task.capabilities))
        return [CheckResult(expr, task_name, "applicable", "skipped", f"{reason} ('{task_name}' offers {offered})")]
    setup = _set_up(expr, task_name, task, seed, use_data)
    if isinstance(setup, CheckResult):
        return [setup]
    pair, configure, spec_note = setup
    try:
        model = pair.build(seed)
        loss_a = pair.loss(model)
    except Exception as exc:
        return [CheckResult(expr, task_name, "build", "failed", error_line(exc))]
    checks = _checks(pair, model, loss_a, configure, spec_note, task_name)
    return [CheckResult(expr, task_name, check, *outcome) for check, outcome in _run_in_order(checks)]


def _set_up(expr: str, task_name: str, task: Task, seed: int,
            use_data: bool) -> tuple[Pair, Callable[[ModelSpec], ModelSpec], str] | CheckResult:
    """The pair under test (real batches when the task's data is ready), its spec filler and note."""
    from modtransfer.core.variant import resolve

    ready, data_note = _data_ready(task) if use_data else (False, "synthetic data requested")
    configure, spec_note = _configurer(task, ready)
    try:
        resolved = resolve(expr, configure(CONTRACT_SPEC))
    except ConflictError:
        raise
    except Exception as exc:  # a variant that cannot even produce a valid spec
        return CheckResult(expr, task_name, "resolve", "failed", error_line(exc))
    batches: Iterator[Any] | None = None
    if ready:
        try:
            batches = task.train_batches(seed, BATCH)
            return Pair(expr, task, resolved.spec, resolved, seed, batches, data_note), configure, spec_note
        except Exception as exc:
            return CheckResult(expr, task_name, "loss", "failed", f"task.train_batches failed: {error_line(exc)}")
    return Pair(expr, task, resolved.spec, resolved, seed, None, data_note), configure, spec_note


def _checks(pair: Pair, model: Transformer, loss_a: torch.Tensor, configure: Callable[[ModelSpec], ModelSpec],
            spec_note: str, task_name: str) -> dict[str, Callable[[], Outcome]]:
    """Each check of :data:`CHECKS` as a thunk over the built model and its first loss."""
    source = (f"task.loss on a real '{task_name}' batch" if pair.real_batch is not None
              else f"synthetic batch ({pair.data_note})")

    def forward() -> Outcome:
        status, detail = check_forward(pair, model)
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
        return check_gradients(pair, model, loss_a)

    def determinism() -> Outcome:
        loss_b = pair.loss(pair.build(pair.seed)).detach()  # with autograd on, as loss_a: same kernels
        return check_determinism(loss_a, loss_b)

    return {
        "forward": forward, "meta": lambda: check_meta(pair), "loss": loss, "gradients": gradients,
        "causality": lambda: check_causality(pair, model), "padding": lambda: check_padding(pair, model),
        "determinism": determinism, "state_dict": lambda: check_state_dict(pair, model),
        "matching": lambda: check_matching(pair, configure),
    }


def _run_in_order(checks: dict[str, Callable[[], Outcome]]) -> list[tuple[str, Outcome]]:
    """Run the checks in :data:`CHECKS` order; after a non-finite output every later check is skipped."""
    out: list[tuple[str, Outcome]] = []
    stopped = ""
    for check in CHECKS:
        if stopped:
            out.append((check, ("skipped", f"not run: {stopped}")))
            continue
        try:
            out.append((check, checks[check]()))
        except NonFinite as exc:
            out.append((check, ("failed", str(exc))))
            stopped = f"the {check} check met non-finite outputs"
        except Exception as exc:
            out.append((check, ("failed", error_line(exc))))
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
