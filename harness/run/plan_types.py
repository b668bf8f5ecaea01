"""A plan's data: its cells and the plan itself, as loaded and validated by :mod:`modtransfer.run.plan`.

These two dataclasses are what every executor, the store and the reports pass around; they sit
below the plan's loading (which checks executor names against the executor registry), so nothing
that runs cells needs to import the loader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import Budget, Task
from modtransfer.core.variant import BASELINE, ResolvedVariant


@dataclass(frozen=True)
class Cell:
    """One (variant, task, seed, hyper-parameters) training run, identified by a stable hash."""

    benchmark: str
    variant: str
    task: str
    seed: int
    size: str
    spec: ModelSpec                 # variant applied to the baseline; the task fills vocab etc.
    task_config: dict[str, Any]
    budget: Budget
    hparams: dict[str, Any] = field(default_factory=dict)
    slots: tuple[str, ...] = ()
    code: str = ""            # digest of the plugin code the cell uses ("" when all built in)
    gate: str = "built-in"    # the contract gate: "built-in", "passed" or "skipped" (--no-check); not in the id
    precision: str = "auto"   # plan.precision: auto (bf16 on CUDA, fp32 elsewhere), fp32 or bf16

    def id_payload(self) -> dict[str, Any]:
        """What :attr:`cell_id` hashes (a fresh dict)."""
        data = {"variant": self.variant, "task": self.task, "seed": self.seed, "spec": self.spec.to_dict(),
                "task_config": self.task_config, "hparams": self.hparams,
                # evaluating more often observes training without changing it: not part of the id
                "budget": self.budget.identity()}
        if self.code:  # a changed plugin trains anew; built-in cells keep their ids
            data["code"] = self.code
        if self.precision != "auto":  # cells of an explicit precision never pair with auto ones
            data["precision"] = self.precision
        return data

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.id_payload(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        hp = ",".join(f"{k}={v}" for k, v in sorted(self.hparams.items()))
        return f"{self.task}/{self.variant}/{self.seed}" + (f"[{hp}]" if hp else "")


@dataclass
class Plan:
    name: str
    size: str
    seeds: list[int]
    variants: list[str]
    tasks: list[str]
    base_spec: ModelSpec
    budget: dict[str, Any]
    task_budget: dict[str, dict[str, Any]]
    task_config: dict[str, dict[str, Any]]
    hparams: dict[str, list[Any]] | list[dict[str, Any]]   # axes (crossed) or explicit rows
    wandb: dict[str, Any]
    executor: str
    workers: int | None             # worker processes; None: chosen per run (modtransfer.run.layout)
    raw: dict[str, Any]
    source: str = ""
    margins: dict[str, float] = field(default_factory=dict)
    sizes: list[str] = field(default_factory=list)   # size axis; [] = just ``size``
    implementations: list[str] = field(default_factory=lambda: ["modtransfer"])  # baselines the variants patch
    spec_overrides: dict[str, Any] = field(default_factory=dict)   # plan.spec, applied to every size preset
    looks: list[int] = field(default_factory=list)   # adaptive seeds: paired seeds at each look; [] = fixed
    cells: list[Cell] = field(default_factory=list)  # the cells to run now (first look when adaptive)
    all_cells: list[Cell] = field(default_factory=list)  # every cell up to the largest look
    stack: Any = "auto"   # seeds trained as one stacked model: auto, or at most N per group (1: off)
    skipped: list[dict[str, str]] = field(default_factory=list)
    resolved: dict[str, ResolvedVariant] = field(default_factory=dict)
    precision: str = "auto"   # see modtransfer.core.precision
    threads: int | None = None      # torch threads per worker; None: chosen per run
    tuning: Any = None   # equal tuning per arm (modtransfer.run.tuning.Tuning); None: drop-in only

    def task_budget_for(self, task: Task) -> Budget:
        base = task.default_budget.replace(**self.budget)
        return base.replace(**self.task_budget.get(task.name, {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "size": self.size, "sizes": self.sizes, "implementations": self.implementations,
            "seeds": {"min": self.looks[0], "max": self.looks[-1], "step": self.looks[1] - self.looks[0]}
            if self.adaptive else self.seeds, "variants": self.variants,
            "tasks": self.tasks, "spec": self.spec_overrides, "budget": self.budget,
            "task_budget": self.task_budget, "task_config": self.task_config, "hparams": self.hparams,
            "wandb": self.wandb, "executor": self.executor, "workers": _auto_name(self.workers),
            "threads": _auto_name(self.threads), "source": self.source,
            "margins": self.margins, "looks": self.looks, "precision": self.precision,
            **({"tuning": self.tuning.to_dict()} if self.tuning is not None else {}),
        }

    @property
    def adaptive(self) -> bool:
        return len(self.looks) > 1

    def cells_through(self, look: int, pairs: set[tuple[str, str, str]] | None = None) -> list[Cell]:
        """Cells of the first ``look`` seeds; with ``pairs`` only (variant, task, hparams JSON) in it + their baselines."""
        keep = set(self.seeds[:look])
        out = []
        for c in self.all_cells:
            if c.seed not in keep:
                continue
            if pairs is not None:
                hp = json.dumps(c.hparams, sort_keys=True)
                base_needed = any(t == c.task and h == hp for _, t, h in pairs)
                if (c.variant, c.task, hp) not in pairs and not (c.variant == BASELINE and base_needed):
                    continue
            out.append(c)
        return out


def _auto_name(value: int | None) -> int | str:
    return "auto" if value is None else value


def seed_major(cells: list[Cell], variants: list[str], seeds: list[int]) -> list[Cell]:
    """Seed by seed; within a seed task by task; the variants' order rotated by one each seed.

    A change in machine load during a benchmark then touches every variant alike instead of
    being confounded with whichever variant ran last.
    """
    vpos = {v: i for i, v in enumerate(variants)}
    spos = {s: i for i, s in enumerate(seeds)}
    nv = max(1, len(variants))

    def key(c: Cell) -> tuple[int, str, str, str, int]:
        k = spos[c.seed]
        return k, c.size, c.task, json.dumps(c.hparams, sort_keys=True), (vpos[c.variant] - k) % nv

    return sorted(cells, key=key)
