"""A task's card: what its numbers are (data, splits, tokenisation, units, evaluation, margin).

Reports cite a comparison's numbers with the card of the task they come from (the "Tasks"
section of a report, the ``task_card`` of each W&B run's config), so a reader can tell nats per
character from nats per token and BLEU from MSE without reading the task's code.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Keys of :meth:`~modtransfer.core.task.Task.describe` that hold split sizes (one count per split).
SPLIT_KEYS = ("pairs", "dropped_over_max_len", "tokens", "characters")


@dataclass(frozen=True)
class TaskCard:
    """What a reader needs to cite a task's numbers: the data, how it is tokenised and split, what
    each metric measures and in which unit, how it is evaluated, and where the margin comes from.

    ``units``: metric -> its unit in words ("nats per character"); ``keys``: metric -> the name it
    is logged under, with its unit (``val_loss_nats_per_char``; ``""`` keeps the metric's name).
    Text fields may name task options in braces (``{max_len}``): they are filled in from the
    instance's configuration (:meth:`Task.card_vars`).
    """

    data: str
    tokenisation: str
    evaluation: str
    margin_source: str
    units: dict[str, str]
    keys: dict[str, str]


#: The one sign convention of every paired difference the project reports (tables, plots, exports,
#: each W&B run's summary): the improvement, positive = better, in the units of the task's metric.
SIGN_CONVENTION = ("improvement = baseline - variant for a metric where lower is better (a loss), variant - "
                   "baseline where higher is better (BLEU); positive = better, in the units of the task's metric")


def improvement(variant: float, baseline: float, higher_is_better: bool) -> float:
    """``variant``'s improvement over ``baseline`` under :data:`SIGN_CONVENTION` (positive = better)."""
    return variant - baseline if higher_is_better else baseline - variant
