"""Tasks: what a cell trains on and how it is scored.

A task declares its topology, data, loss, metrics (torchmetrics), primary metric and its
direction, and a default budget. The harness never looks inside a batch: it asks the task
for batches, for a loss and for an evaluation. Tasks register with :func:`register_task`.

A task is handed a :class:`~modtransfer.core.model.Transformer`; it calls encode, decode, token_nll, log_probs, project.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.registry import Registry
from modtransfer.core.task_card import SPLIT_KEYS, TaskCard

if TYPE_CHECKING:
    from torch import Tensor

    from modtransfer.core.model import Transformer
    from modtransfer.core.spec import ModelSpec

TASKS: Registry[type[Task]] = Registry("task")
TOPOLOGIES = ("decoder", "encoder", "encoder_decoder")
SCHEDULES = ("inverse_sqrt", "cosine", "linear", "constant")

Batch = dict[str, Any]

#: The task option (``task_config``; a plan's ``decide_on:`` sets it) naming the metric a task decides on.
DECIDE_ON = "decide_on"
#: What a :class:`Decision` sets on a task (class attributes of the same names).
DECISION_FIELDS = ("higher_is_better", "margin", "noise_sd", "trivial_name")


@dataclass(frozen=True)
class Decision:
    """A metric a task can decide a comparison on, with its declarations (units of the metric).

    ``margin``: the smallest effect of interest (the equivalence margin); ``noise_sd``: the
    baseline's declared seed-to-seed SD at the default budget and the ``tiny`` preset;
    ``trivial_name``: the trivial system :meth:`Task.trivial_score` scores for this metric
    ("" keeps the task's ``trivial_name``). Each task justifies its numbers in its docstring.
    """

    higher_is_better: bool
    margin: float
    noise_sd: float
    trivial_name: str = ""


def _check_decisions(name: str, cls: type[Task]) -> None:
    """A task that declares ``decisions`` decides by default on ``primary_metric``, one of them, and
    its class-level ``higher_is_better`` / ``margin`` / ``noise_sd`` are that decision's."""
    if not cls.decisions:
        return
    if cls.primary_metric not in cls.decisions:
        raise ValueError(f"task {name!r}: primary_metric {cls.primary_metric!r} is not one of its decisions "
                         f"({', '.join(cls.decisions)})")
    default = cls.decisions[cls.primary_metric]
    for key in DECISION_FIELDS:
        value = getattr(default, key)
        if key in vars(cls) and value != vars(cls)[key] and not (key == "trivial_name" and not value):
            raise ValueError(f"task {name!r}: {key} = {vars(cls)[key]!r} disagrees with decisions"
                             f"[{cls.primary_metric!r}].{key} = {value!r}; declare it once, in decisions")
        if key != "trivial_name" or value:
            setattr(cls, key, value)


def register_task(name: str):
    """Class decorator registering a :class:`Task` subclass under ``name``."""

    def decorator(cls: type[Task]) -> type[Task]:
        if cls.topology not in TOPOLOGIES:
            raise ValueError(f"task {name!r}: topology must be one of {TOPOLOGIES}")
        _check_decisions(name, cls)
        cls.name = name
        TASKS.register(name, cls, topology=cls.topology, description=cls.description)
        return cls

    return decorator


#: Values beyond these are typos, not plans (a batch of 10**9 sequences cannot fit in any memory).
BUDGET_CEILINGS = {"steps": 10_000_000, "batch_size": 65_536, "lr": 100.0, "eval_batches": 100_000,
                   "eval_every": 10_000_000, "test_batches": 100_000, "max_seconds": 30 * 86_400.0, "diverge_factor": 1e6,
                   "weight_decay": 100.0, "grad_clip": 1e6, "diag_every": 10_000_000}
#: Budget fields that only observe training (never change it): left out of ``Budget.to_dict``, so
#: they are in no cell id and never split a condition (cells differing only in them are paired).
OBSERVING_FIELDS = ("diag_every", "test_batches")
#: Every field that only observes training: besides the above, ``eval_every`` (how often the cell is
#: evaluated), which rows record but ids and conditions ignore (:meth:`Budget.identity`).
OBSERVERS = (*OBSERVING_FIELDS, "eval_every")


@dataclass(frozen=True)
class Budget:
    """How long and how a cell trains (AdamW with linear warm-up, then the schedule)."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    warmup: float = 0.05          # fraction of steps
    schedule: str = "inverse_sqrt"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0         # 0: off
    eval_every: int = 0            # 0: only at the end
    eval_batches: int = 8
    max_seconds: float = 0.0       # wall-clock limit per cell; 0: none
    diverge_factor: float = 4.0    # stop (status "diverged") when loss > factor * initial loss; 0: only NaN/inf
    #: record the diagnostics (gradient norms, attention entropy, ...) every this many steps; 0: off.
    #: 50 keeps their cost under 5% of step time: measured 3.4% (tiny regression), 1.6% (lm), 1.3%
    #: (mt) on one CPU thread, the tiny preset (a diagnostic step costs 1.3-1.8 ordinary steps).
    diag_every: int = 50
    #: also score the final model on this many batches of the task's test split (``test_<metric>`` among
    #: the row's metrics; 0: off). Observes only: the tuning regime selects on validation and reports on test.
    test_batches: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, str) and f.name != "schedule":
                hint = ("; YAML reads numbers like 1e-3 as text: write 1.0e-3" if any(c in v for c in "eE")
                        else "")
                raise UserError(f"budget.{f.name} must be a number, got the string {v!r}{hint}")
            if f.name == "betas":
                if isinstance(v, list):
                    object.__setattr__(self, "betas", tuple(v))
                    v = self.betas
                if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(b, int | float) and 0 <= b < 1 for b in v)):
                    raise UserError(f"budget.betas must be two numbers in [0, 1), got {v!r}")
            elif f.name == "schedule":
                if v not in SCHEDULES:
                    raise UserError(f"budget.schedule must be one of {', '.join(SCHEDULES)}, got {v!r}")
            elif f.type in ("int", int):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise UserError(f"budget.{f.name} must be a non-negative integer, got {v!r}")
            else:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise UserError(f"budget.{f.name} must be a non-negative number, got {v!r}")
                if not math.isfinite(v):
                    raise UserError(f"budget.{f.name} must be a finite number, got {v!r}")
                if v < 0:
                    raise UserError(f"budget.{f.name} must be a non-negative number, got {v!r}")
                object.__setattr__(self, f.name, float(v))
            ceiling = BUDGET_CEILINGS.get(f.name)
            if ceiling is not None and getattr(self, f.name) > ceiling:
                raise UserError(f"budget.{f.name} is {getattr(self, f.name)!r}, at most {ceiling:g} makes sense here; "
                                "check the value")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("budget: steps and batch_size must be >= 1 and lr > 0")
        if self.warmup >= 1:
            raise UserError(f"budget.warmup is a fraction of steps and must be < 1, got {self.warmup}")

    def replace(self, **changes: Any) -> Budget:
        names = {f.name for f in fields(self)}
        for k in changes:
            if k not in names:
                raise UserError(f"budget has no field {k!r}{did_you_mean(k, names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that shape training (``OBSERVING_FIELDS`` left out): what ids and conditions use."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in OBSERVING_FIELDS}
        d["betas"] = list(self.betas)
        return d

    def identity(self) -> dict[str, Any]:
        """What a cell id hashes: :meth:`to_dict` with ``eval_every`` at 0 (evaluating more often observes
        training without changing it; 0 keeps the ids cells had before periodic evaluation was the default)."""
        return {**self.to_dict(), "eval_every": 0}

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Budget | None = None, where: str = "budget") -> Budget:
        if not isinstance(data, dict):
            raise UserError(f"{where} must be a mapping, got {type(data).__name__}")
        return (base or cls()).replace(**data)


def default_cache_dir() -> Path:
    """``$MODTRANSFER_CACHE`` or ``~/.cache/modtransfer``."""
    env = os.environ.get("MODTRANSFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modtransfer"


class Task:
    """Base class of a task. Subclasses set the class attributes and the data methods."""

    name: ClassVar[str] = ""
    topology: ClassVar[str] = "decoder"
    description: ClassVar[str] = ""
    credit: ClassVar[str] = ""             # data licence / attribution
    primary_metric: ClassVar[str] = "val_loss"
    higher_is_better: ClassVar[bool] = False
    has_vocab: ClassVar[bool] = True
    has_padding: ClassVar[bool] = False
    #: whether :meth:`test_batches` gives a test split (needed by a plan's ``tuning``)
    has_test_split: ClassVar[bool] = False
    default_budget: ClassVar[Budget] = Budget()
    #: task options and their defaults; a plan's ``task_config`` may override them
    default_config: ClassVar[dict[str, Any]] = {}
    #: Smallest effect of interest (the equivalence margin), in units of ``primary_metric``:
    #: a variant whose mean paired difference lies within +-margin counts as "no change".
    margin: ClassVar[float] = 0.0
    #: Declared seed-to-seed standard deviation of the baseline's ``primary_metric`` at
    #: ``default_budget`` and the ``tiny`` size preset (measured; each task documents how).
    noise_sd: ClassVar[float] = 0.0
    #: The metrics a comparison on this task may be decided on, each with its declarations
    #: (:class:`Decision`); ``primary_metric`` is the default and the option ``decide_on`` (a plan's
    #: ``decide_on: {task: metric}``) picks another. Empty: only ``primary_metric``, declared by the
    #: class attributes above. An instance's ``primary_metric``, ``higher_is_better``, ``margin``,
    #: ``noise_sd`` and ``trivial_name`` are those of the metric it decides on.
    decisions: ClassVar[dict[str, Decision]] = {}
    #: A short description of the system :meth:`trivial_score` scores.
    trivial_name: ClassVar[str] = ""
    #: A training run whose final metric stays within this fraction of the trivial score never
    #: left the trivial plateau (e.g. a regression model still predicting the mean); None: the
    #: task has no such plateau. Used by the report's training-sensitivity section.
    plateau_fraction: ClassVar[float | None] = None
    #: The task's card (:class:`TaskCard`): None for a task that declares none (its card then says so).
    card: ClassVar[TaskCard | None] = None

    def __init__(self, config: dict[str, Any] | None = None, cache_dir: str | Path | None = None) -> None:
        config = dict(config or {})
        decide_on = config.pop(DECIDE_ON, None)
        for key, value in config.items():
            if key not in self.default_config:
                options = [*self.default_config, DECIDE_ON]
                raise UserError(
                    f"task {self.name!r} has no option {key!r}{did_you_mean(key, options)}; "
                    f"options: {', '.join(options)}"
                )
            want = self.default_config[key]
            if want is not None and not isinstance(value, type(want)) and not (
                isinstance(want, float) and isinstance(value, int) and not isinstance(value, bool)
            ):
                raise UserError(
                    f"task {self.name!r} option {key!r} must be {type(want).__name__}, got {value!r}"
                )
        self.config: dict[str, Any] = {**self.default_config, **config}
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._decide_on(decide_on)

    @classmethod
    def decidable(cls) -> dict[str, Decision]:
        """The metrics this task may decide on (:attr:`decisions`, or ``primary_metric`` alone)."""
        if cls.decisions:
            return dict(cls.decisions)
        return {cls.primary_metric: Decision(cls.higher_is_better, cls.margin, cls.noise_sd)}

    def _decide_on(self, metric: Any) -> None:
        """Decide on ``metric`` (None: the class's ``primary_metric``).

        A task with more than one decidable metric records the choice in its config (so in every
        cell id: rows deciding on different metrics never pair); with one, the option can only
        name it and is left out (ids as before the option existed).
        """
        options = self.decidable()
        default = type(self).primary_metric
        metric = default if metric is None else metric
        if not isinstance(metric, str) or metric not in options:
            raise UserError(f"task {self.name!r} cannot decide on {metric!r}; it decides on "
                            f"{' or '.join(options)}{did_you_mean(str(metric), options)}")
        if len(options) > 1:
            self.config[DECIDE_ON] = metric
        decision = options[metric]
        self.primary_metric = metric  # type: ignore[misc]  # per instance: the metric it decides on
        for key in DECISION_FIELDS:
            value = getattr(decision, key)
            if key != "trivial_name" or value:
                setattr(self, key, value)

    # -- declared properties ----------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        caps = {self.topology}
        if self.has_vocab:
            caps.add("vocab")
        if self.has_padding:
            caps.add("padding")
        if self.topology in ("decoder", "encoder_decoder"):
            caps.add("causal")
        return frozenset(caps)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "topology": self.topology, "primary_metric": self.primary_metric,
            "higher_is_better": self.higher_is_better, "config": dict(self.config), "credit": self.credit,
        }

    def metric_unit(self, metric: str) -> str:
        """``metric``'s unit in words ("" when the task's card does not declare it)."""
        return self.card.units.get(metric, "").format(**self.card_vars()) if self.card else ""

    def metric_key(self, metric: str) -> str:
        """The name ``metric`` is logged under: ``<task>/<metric>_<unit>`` (e.g. ``lm/val_loss_nats_per_char``),
        so keys of different tasks, and different units, never share a chart or a column."""
        key = (self.card.keys.get(metric, "") if self.card else "").format(**self.card_vars())
        return f"{self.name}/{key or metric}"

    def card_vars(self) -> dict[str, Any]:
        """What the card's ``{names}`` are filled in from: the options (a task may add derived words)."""
        return dict(self.config)

    def split_sizes(self) -> dict[str, Any]:
        """Sizes of the splits, as :meth:`describe` gives them once the data is prepared (its keys
        :data:`SPLIT_KEYS`); {} before. A task may count them its own way."""
        d = self.describe()
        return {k: d[k] for k in SPLIT_KEYS if k in d}

    def card_info(self) -> dict[str, Any]:
        """The task's card as plain data, for the report's "Tasks" section and each W&B run's config:
        the card's text with this instance's options filled in, split sizes (when known), the metric it
        decides on with unit and direction, the margin and where it comes from, the trivial system."""
        card = self.card
        text = {f: (getattr(card, f).format(**self.card_vars()) if card else "not declared by the task")
                for f in ("data", "tokenisation", "evaluation", "margin_source")}
        metrics = sorted({self.primary_metric, *(card.units if card else {})})
        return {
            "task": self.name, "description": self.description, **text, "splits": self.split_sizes(),
            "metrics": {m: {"unit": self.metric_unit(m), "key": self.metric_key(m)} for m in metrics},
            "decides_on": self.primary_metric, "unit": self.metric_unit(self.primary_metric),
            "higher_is_better": bool(self.higher_is_better), "margin": float(self.margin),
            "trivial_name": self.trivial_name, "credit": self.credit,
        }

    def gate_info(self) -> dict[str, Any]:
        """What a verdict needs to know about this task to trust a comparison on it.

        ``margin`` and ``noise_sd`` (declared, in units of ``metric``), ``trivial`` (the score of
        the trivial system ``trivial_name`` on this task's own held-out data, computed here, so
        the data is prepared first unless it is already loaded), ``metric`` and
        ``higher_is_better``. A baseline that is not clearly better than ``trivial`` has not
        learned the task, and no call is made on it.
        """
        if getattr(self, "_data", None) is None:  # tasks keep their prepared data in ``_data``
            self.prepare()
        info = {
            "margin": float(self.margin), "noise_sd": float(self.noise_sd), "trivial": float(self.trivial_score()),
            "trivial_name": self.trivial_name, "metric": self.primary_metric,
            "higher_is_better": bool(self.higher_is_better),
        }
        if self.plateau_fraction is not None:
            info["plateau_fraction"] = float(self.plateau_fraction)
        return info

    # -- to implement ---------------------------------------------------------------
    def prepare(self) -> None:
        """Fetch and preprocess data into ``self.cache_dir`` (idempotent, checksum-verified).

        Raises :class:`UserError` with the exact command to run when data cannot be fetched.
        """

    def configure_spec(self, spec: ModelSpec) -> ModelSpec:
        """Fill in ``vocab_size`` / ``in_features`` / ``out_features`` / ``max_len``."""
        raise NotImplementedError

    def train_batches(self, seed: int, batch_size: int) -> Iterator[Batch]:
        """An endless, seed-determined stream of training batches."""
        raise NotImplementedError

    def val_batches(self, seed: int, batch_size: int, limit: int) -> list[Batch]:
        """A fixed held-out set (at most ``limit`` batches), the same for every variant."""
        raise NotImplementedError

    def test_batches(self, seed: int, batch_size: int, limit: int) -> list[Batch] | None:
        """``limit`` batches of the task's test split, which selection never reads (None: no test split).

        A task with a test split sets ``has_test_split`` and says in its docstring how the split is drawn.
        """
        return None

    def loss(self, model: Transformer, batch: Batch) -> Tensor:
        """Scalar training loss (without auxiliary losses, which the harness adds)."""
        raise NotImplementedError

    def evaluate(self, model: Transformer, batches: list[Batch]) -> dict[str, float]:
        """Metrics over held-out batches; must include ``primary_metric`` and ``val_loss``."""
        raise NotImplementedError

    def count_tokens(self, batch: Batch) -> int:
        """Tokens (positions) a batch feeds the model, for tokens-per-second."""
        raise NotImplementedError

    def trivial_score(self) -> float:
        """``primary_metric`` of a trivial system (``trivial_name``) on the held-out data that
        :meth:`evaluate` scores, in the same units: the score a baseline must clearly beat to
        count as having learned the task. A task with several :attr:`decisions` scores the
        metric the instance decides on."""
        raise NotImplementedError(
            f"task {self.name or type(self).__name__!r} does not define trivial_score(); a task must "
            f"score a trivial system on its own held-out data (see modtransfer.core.task.Task.trivial_score)"
        )
