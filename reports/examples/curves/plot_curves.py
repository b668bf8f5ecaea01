"""Learning curves of the baselines at the budgets that learn on one CPU thread.

Reads the ``curve`` column of a results store (one JSON list of ``{step, train_loss, val_*}``
per cell, written when the budget sets ``eval_every``; see ``harness/store.py``) and draws,
per cell, the training loss and the held-out loss against the optimiser step, plus held-out
BLEU on a second axis for ``mt``. The points are also written next to the figure as JSON, so
the figure can be redrawn without the store.

Usage::

    python reports/examples/curves/plot_curves.py STORE.sqlite TASK OUT.png [--title TEXT]

Plotting follows the matplotlib documentation's ``twinx`` example
(https://matplotlib.org/stable/gallery/subplots_axes_and_figures/two_scales.html).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path


def load_curves(store: Path, task: str) -> list[dict]:
    """Every baseline cell of ``task`` in ``store``: seed, final metrics, wall seconds, curve."""
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT seed, primary_metric, primary_value, wall_s, steps, curve, budget, task_config, spec "
            "FROM cells WHERE task = ? AND variant = 'baseline' AND status = 'done' ORDER BY seed",
            (task,),
        ).fetchall()
    finally:
        con.close()
    out = []
    for seed, metric, value, wall, steps, curve, budget, config, spec in rows:
        out.append({"seed": seed, "metric": metric, "value": value, "wall_s": wall, "steps": steps,
                    "curve": json.loads(curve), "budget": json.loads(budget),
                    "task_config": json.loads(config), "spec": json.loads(spec)})
    return out


def plot(cells: list[dict], task: str, out: Path, title: str) -> None:
    """One figure: train and val loss (left axis), val BLEU if present (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax2 = None
    for cell in cells:
        pts = cell["curve"]
        tr = [(p["step"], p["train_loss"]) for p in pts if "train_loss" in p]
        va = [(p["step"], p["val_loss"]) for p in pts if "val_loss" in p]
        tag = f"seed {cell['seed']}"
        ax.plot(*zip(*tr, strict=True), color="tab:gray", alpha=0.6, lw=1, label=f"train loss ({tag})")
        ax.plot(*zip(*va, strict=True), "o-", color="tab:blue", ms=3, label=f"val loss ({tag})")
        bleu = [(p["step"], p["val_bleu"]) for p in pts if "val_bleu" in p]
        if bleu:
            ax2 = ax2 or ax.twinx()
            ax2.plot(*zip(*bleu, strict=True), "s-", color="tab:red", ms=3, label=f"val BLEU ({tag})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("nats per token" if task == "mt" else "nats per character")
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("BLEU (greedy, sacrebleu)")
        ax2.axhline(5.0, color="tab:red", ls=":", lw=1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    else:
        ax.axhline(2.0, color="tab:blue", ls=":", lw=1)
    ax.legend(handles, labels, fontsize=8, loc="center right")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("task")
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    cells = load_curves(args.store, args.task)
    if not cells:
        raise SystemExit(f"no finished baseline cell of task {args.task!r} in {args.store}")
    plot(cells, args.task, args.out, args.title or f"{args.task} baseline")
    args.out.with_suffix(".json").write_text(json.dumps(cells, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
