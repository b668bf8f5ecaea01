"""The executor registry: the names a plan's ``executor`` and ``run --executor`` accept, and what
each does (the command line's help shows these lines).

It holds names and descriptions only, so the plan reader checks a name without importing the
executors themselves (the worker pool, the store); :mod:`modtransfer.run.runner` maps each name
to the function that trains the cells, and a test keeps the two in step.
"""

from __future__ import annotations

#: executor name -> what it does (shown by ``modtransfer run --help``)
EXECUTORS: dict[str, str] = {
    "auto": "This process for a layout of one worker, else the worker pool (the default).",
    "local": "In this process, one group (one stacked model, or one cell) at a time, on the layout's torch threads.",
    "processes": "A pool of long-lived worker processes on this machine (workers x threads of the layout).",
    "ray": "Ray tasks on a local cluster or an existing one (--ray-address); workers = tasks in flight.",
}


def executor_help() -> str:
    """One line naming every executor and what it does."""
    return "; ".join(f"{name}: {text.strip().rstrip('.')}" for name, text in EXECUTORS.items())
