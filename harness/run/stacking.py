"""Which cells train together as one stacked model: seeds as a batch dimension.

Cells that differ only by seed (same variant, task, spec, task options, hyper-parameters, budget,
precision and plugin code) form a *group*; a group of K members trains as one model whose
parameters carry a leading member axis (:mod:`modtransfer.run.stacked`), each member exactly its
own seed's run. This module is plan-time logic only (no torch import): it forms the groups and
says, in words, why a cell cannot stack. A cell that cannot stack trains alone, as before.

``stack`` (a plan's ``stack:`` key): ``auto`` (the default) stacks up to :func:`auto_members`
seeds by the cell's size, an integer ``N >= 1`` up to N (1 turns stacking off).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modtransfer.run.plan_types import Cell

#: A group never holds more members than this (memory grows with the members; past it the
#: step's tensors leave the CPU's caches and a member step gets slower, measured by ``bench seeds``).
MAX_MEMBERS = 16
#: ``stack: auto`` on a CPU: cells under this many matmul FLOPs per training step stack
#: :data:`AUTO_MEMBERS` seeds; larger ones train one seed at a time. A small cell's step is mostly
#: per-operation overhead, which the members share; a larger one is bound by its matmuls and
#: memory traffic, which stacking does not shrink (batched matmuls ran slower than one-by-one
#: ones on 2 cores, ``modtransfer bench seeds``). On a GPU every stackable cell stacks.
CPU_STACK_MAX_FLOPS = 5e8
AUTO_MEMBERS = 8


def group_key(cell: Cell) -> str:
    """What a cell's id hashes, less the seed: cells with equal keys can stack."""
    data = cell.id_payload()
    data.pop("seed")
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def why_not_stackable(cell: Cell) -> str | None:
    """The reason ``cell`` must train alone, or None when it can stack (checked before training;
    a component that fails under the stacked forward is found by a probe when the group starts)."""
    from modtransfer.core.spec import DROPOUT_SITES

    spec = cell.spec
    if spec.dropout > 0 and any(spec.dropout_for(s) > 0 for s in DROPOUT_SITES):
        return (f"dropout {spec.dropout:g}: a stacked member's dropout masks would not be its own seed's "
                "(their stream is the global generator's, drawn in one-by-one order)")
    from modtransfer.core.task import TASKS

    task = TASKS.get(cell.task) if cell.task in TASKS else None
    if task is not None and task.has_padding and not getattr(task, "stack_pad", None):
        return (f"task {cell.task!r} pads its batches and declares no stack_pad (the values that pad members' "
                "batches to one shape)")
    if cell.budget.max_seconds:
        return "a wall-clock budget (max_seconds) is per cell; members of one stacked model share one clock"
    if cell.gate not in ("built-in", "passed"):
        return "a plugin that skipped the contract gate (--no-check) trains alone"
    return _recipe_reason(spec.recipe)


def _recipe_reason(recipe: Any) -> str | None:
    """Why a cell's training recipe keeps it from stacking: the stacked model runs one fused AdamW
    over tensors with a member axis, exact per member for AdamW's elementwise update only; an
    auxiliary loss's hooks would see all members' activations at once."""
    if recipe.optimizer != "adamw" or recipe.options:
        return (f"optimizer {recipe.optimizer}: the stacked model's optimiser is AdamW over tensors with a member "
                "axis (exact per member for its elementwise update only); other recipes train one seed at a time")
    if recipe.aux_losses:
        names = ", ".join(name for name, _ in recipe.aux_losses)
        return (f"auxiliary loss {names}: its term reads one model's forward, not a member's under the stacked "
                "(vmapped) forward")
    return None


def auto_members(cell: Cell, device: str = "cpu") -> int:
    """Members per group under ``stack: auto``, from the device and the cell's matmul FLOPs per step."""
    from modtransfer.run.layout import cell_cost

    if not device.startswith("cpu"):
        return AUTO_MEMBERS
    return AUTO_MEMBERS if cell_cost(cell).step_flops < CPU_STACK_MAX_FLOPS else 1


def resolve_members(stack: Any, cell: Cell, device: str = "cpu") -> int:
    """The largest group ``cell`` may join under the plan's ``stack`` setting."""
    if stack in (None, "auto"):
        return auto_members(cell, device)
    return max(1, min(int(stack), MAX_MEMBERS))


def resolve_device(device: str) -> str:
    """``auto`` as the run resolves it: ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def group_cells(cells: Iterable[Cell], stack: Any = "auto", device: str = "auto") -> list[list[Cell]]:
    """``cells`` in groups that train together, in the order of each group's first cell.

    A group holds cells of one :func:`group_key`, at most :func:`resolve_members` of them, in
    the order given; a cell that cannot stack (:func:`why_not_stackable`) is a group of one.
    """
    device = resolve_device(device)
    open_groups: dict[str, list[Cell]] = {}
    groups: list[list[Cell]] = []
    for cell in cells:
        if why_not_stackable(cell) is not None:
            groups.append([cell])
            continue
        key = group_key(cell)
        current = open_groups.get(key)
        if current is None or len(current) >= resolve_members(stack, cell, device):
            current = []
            open_groups[key] = current
            groups.append(current)
        current.append(cell)
    return groups


def alone_reason(cell: Cell, stack: Any = "auto", device: str = "cpu") -> str | None:
    """Why ``cell`` trains one seed at a time under ``stack`` on ``device`` (None: it stacks)."""
    why = why_not_stackable(cell)
    if why is not None:
        return why
    if resolve_members(stack, cell, device) > 1:
        return None
    if stack not in (None, "auto"):
        return f"the plan sets stack: {stack}"
    return (f"on a CPU, cells of {CPU_STACK_MAX_FLOPS / 1e9:g} GFLOP per step or more gain nothing from "
            "stacking (their matmuls run no faster batched; `modtransfer bench seeds` measures it; stack: N forces it)")


def group_cost(group: list[Cell]) -> Any:
    """The layout's size of one group: a member's :class:`~modtransfer.run.layout.CellCost` with the
    FLOPs per step and the training state of all its members."""
    from modtransfer.run.layout import CellCost, cell_cost

    one = cell_cost(group[0])
    return CellCost(one.step_flops * len(group), one.steps, one.state_bytes * len(group))


def describe_stacking(cells: Iterable[Cell], stack: Any = "auto", device: str = "auto") -> list[str]:
    """Lines for the dry run: how the cells group, and which train one seed at a time and why."""
    cells = list(cells)
    device = resolve_device(device)
    groups = group_cells(cells, stack, device)
    stacked = [g for g in groups if len(g) > 1]
    sizes = ", ".join(sorted({str(len(g)) for g in stacked}, key=int)) or "-"
    lines = [f"stacked seeds (stack: {stack if stack is not None else 'auto'}, {device}): {len(cells)} cells train "
             f"as {len(groups)} jobs; {sum(len(g) for g in stacked)} cells in {len(stacked)} stacked groups "
             f"(members per group: {sizes})"]
    reasons: dict[str, set[str]] = {}
    for cell in cells:
        why = alone_reason(cell, stack, device)
        if why is not None:
            reasons.setdefault(why, set()).add(f"{cell.task}/{cell.variant}")
    for why, which in reasons.items():
        names = sorted(which)
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        lines.append(f"  one seed at a time: {shown}: {why}")
    return lines
