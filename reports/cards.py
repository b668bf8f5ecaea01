"""The task cards of a report's tasks (:class:`~modtransfer.core.task_card.TaskCard`), and what the
report says with them: each metric's unit in words and the key the cells' W&B runs log it under.

A card comes from the task registry, the task built with the options its cells ran with (the
store's ``task_config``); split sizes are counted only where the task's data is already cached on
this machine (nothing is fetched for a report). A task the registry does not know (a plugin not
loaded) has no card: its units fall back to the metric's name.
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["card", "metric_key", "unit"]


@functools.lru_cache(maxsize=64)
def _task(name: str, config_json: str, prepare: bool) -> Any:
    """The registered task ``name`` built with ``config_json`` (prepared if asked and its data is cached), or None."""
    try:
        import modtransfer.builtins  # noqa: F401  (registers the built-in tasks)
        from modtransfer.core.task import TASKS

        task = TASKS.entry(name).obj(json.loads(config_json))
        if prepare and getattr(task, "is_prepared", lambda: True)():
            task.prepare()
        return task
    except Exception:  # an unknown or unbuildable task: no card, never a failed report
        return None


def _config(rows: list[dict[str, Any]], task: str) -> str:
    cfg = next((r.get("task_config") or {} for r in rows if r["task"] == task), {})
    return json.dumps(cfg, sort_keys=True, default=str)


def card(rows: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """``task``'s card as plain data (:meth:`~modtransfer.core.task.Task.card_info`), or None."""
    t = _task(task, _config(rows, task), True)
    return t.card_info() if t is not None else None


def unit(rows: list[dict[str, Any]], task: str, metric: str) -> str:
    """``metric``'s unit on ``task`` in words ("nats per character"); the metric's name if undeclared."""
    t = _task(task, _config(rows, task), False)
    return (t.metric_unit(metric) if t is not None else "") or metric


def metric_key(rows: list[dict[str, Any]], task: str, metric: str) -> str:
    """The key the cells' W&B runs log ``metric`` of ``task`` under (``lm/val_loss_nats_per_char``)."""
    t = _task(task, _config(rows, task), False)
    return t.metric_key(metric) if t is not None else f"{task}/{metric}"
