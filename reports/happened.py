"""The report's "What happened" section: why unstable or losing cells ended as they did.

It reads the events and diagnostics that each cell recorded while it trained
(:mod:`modtransfer.run.events`, :mod:`modtransfer.run.diagnostics`) from the run's store and shows:

* how often each kind of event occurred, per variant;
* for each diverged cell, and each variant cell that scored worse than the baseline cell of the
  same condition and seed, that recorded both diagnostics and an event: its events, and small
  multiples of its diagnostics (training loss,
  gradient norm, update ratio, attention entropy, residual RMS, dead FFN units, effective rank
  of the final states) drawn against that baseline cell's (Tufte 1983, "The Visual Display of
  Quantitative Information", on small multiples);
* for a training-sensitivity sweep (a task that declares a plateau, two or more settings): the
  step at which each seed left the plateau of the trivial score, per setting.

A flagged cell without an event, or without diagnostics to draw, is not shown: it is counted under
"Not shown" with the reason (a store written with diagnostics off records neither), since a row
that only says "lost to the baseline, no event recorded" explains nothing the verdicts do not.

Colours are the Okabe & Ito 2008 colour-blind-safe palette: blue the baseline, vermilion the cell.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from .doc import Image, Para, Section, Table

BASELINE = "baseline"
CELL_COLOUR, BASELINE_COLOUR, EVENT_COLOUR = "#D55E00", "#0072B2", "#555555"
DPI = 150
#: most cells drawn (the table of events lists every flagged cell)
MAX_FIGURES = 8
#: the panels of a cell's small multiples: (measure, how layers are combined, title, log scale)
PANELS = (
    ("train_loss", "", "training loss", True),
    ("grad_norm", "global", "gradient norm", True),
    ("update_ratio", "max", "update / weight (max layer)", True),
    ("attn_entropy", "mean", "attention entropy (mean layer)", False),
    ("resid_rms", "last", "residual RMS (last block)", True),
    ("ffn_dead_frac", "max", "dead FFN units (max layer)", False),
    ("hidden_erank", "last", "effective rank, final states", False),
)


def pair_key(row: dict[str, Any]) -> str:
    """What a variant cell shares with its paired baseline cell: task, size, hyper-parameters,
    budget, task configuration, implementation and seed."""
    impl = (row.get("spec") or {}).get("implementation", "modtransfer")
    return json.dumps([row["task"], row["size"], row.get("hparams") or {}, row.get("budget") or {},
                       row.get("task_config") or {}, impl, row["seed"]], sort_keys=True, default=str)


def _worse(row: dict[str, Any], base: dict[str, Any]) -> bool:
    v, b = row.get("primary_value"), base.get("primary_value")
    if row["status"] != "done" or base["status"] != "done" or v is None or b is None:
        return False
    return v < b if row.get("higher_is_better") else v > b


def flagged_cells(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None, str]]:
    """(cell, its paired baseline cell or None, why) for each diverged cell and each variant cell
    that scored worse than its baseline cell (same condition, same seed)."""
    base = {pair_key(r): r for r in rows if r["variant"] == BASELINE}
    out = []
    for r in rows:
        partner = base.get(pair_key(r)) if r["variant"] != BASELINE else None
        if r["status"] == "diverged":
            out.append((r, partner, f"diverged at step {r.get('failed_step')}"))
        elif partner is not None and _worse(r, partner):
            out.append((r, partner, f"{r['primary_metric']} {r['primary_value']:.4g} vs the baseline's "
                                    f"{partner['primary_value']:.4g}"))
    return out


def label(row: dict[str, Any]) -> str:
    hp = ", ".join(f"{k}={v}" for k, v in sorted((row.get("hparams") or {}).items()))
    return f"{row['task']} / {row['variant']} / seed {row['seed']}" + (f" [{hp}]" if hp else "")


def happened_section(a: Any, run_dir: Path, folder: Path) -> Section | None:
    """The "What happened" section of the report of ``run_dir`` (figures drawn into ``folder``), or None
    when no cell recorded an event and no cell is unstable or losing. Flagged cells with diagnostics and an
    event are shown; the others are counted in the section's ``omitted`` notes (the page's "Not shown")."""
    from modtransfer.run.store import Store

    store = Store(Path(run_dir) / "results.sqlite", readonly=True)
    events = store.events()
    flagged = flagged_cells(a.rows)
    escapes = escape_rows(a, events)
    if not flagged and not escapes and not any(events.values()):
        return None
    with_event = [f for f in flagged if events.get(f[0]["cell_id"])]
    ids = [r["cell_id"] for r, _, _ in with_event] + [b["cell_id"] for _, b, _ in with_event if b is not None]
    diags = store.diagnostics(ids) if ids else {}
    shown = [f for f in with_event if diags.get(f[0]["cell_id"])]
    s = Section("What happened", "what-happened", omitted=not_shown_notes(flagged, shown, events))
    if shown or any(events.values()):
        s.blocks.append(Para(
            "Events detected from each cell's loss curve and its diagnostics (recorded every `diag_every` steps: "
            "gradient norms, update ratios, attention entropy, residual-stream RMS, FFN zeros, collapse of the "
            "final states). They say *which mechanism* was at work, not whether a difference is real: the "
            "verdicts above decide that."))
        s.blocks.append(kinds_table(a.rows, events))
    if shown:
        s.blocks += flagged_blocks(shown, events, diags, folder)
    if escapes:
        s.blocks.append(Table(["setting", "seeds", "left the plateau at step (per seed)", "median step", "never left"],
                              escapes, id="plateau-escape",
                              caption="Training sensitivity: the step at which each seed's training loss left the "
                                      "plateau of the trivial score ('—': no plateau, it learned at once or diverged)"))
    return s


def not_shown_notes(flagged: list[tuple[dict[str, Any], dict[str, Any] | None, str]],
                    shown: list[tuple[dict[str, Any], dict[str, Any] | None, str]],
                    events: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The "Not shown" lines for the flagged cells left out of the section, grouped by the reason."""
    drawn = {r["cell_id"] for r, _, _ in shown}
    left = [(r, why) for r, _, why in flagged if r["cell_id"] not in drawn]
    if not left:
        return []
    no_event = [r for r, _ in left if not events.get(r["cell_id"])]
    no_diag = [r for r, _ in left if events.get(r["cell_id"])]
    why_none = ("this store recorded no event and no diagnostics at all (diagnostics off: set the budget's "
                "`diag_every`; or a store written before they existed)" if not any(events.values())
                else "no event was recorded for them (nothing crossed a threshold, or diagnostics were off)")
    out = []
    for cells, why in ((no_event, why_none), (no_diag, "an event but no diagnostics recorded, so nothing to draw")):
        if cells:
            out.append(f"**What happened**: {_counted(cells)} not shown: {why}. {_names(cells)}")
    return out


def _counted(cells: list[dict[str, Any]]) -> str:
    diverged = sum(r["status"] == "diverged" for r in cells)
    parts = [f"{len(cells) - diverged} lost to the baseline cell of the same seed" if len(cells) > diverged else "",
             f"{diverged} diverged" if diverged else ""]
    return f"{len(cells)} flagged cell(s) (" + ", ".join(p for p in parts if p) + ")"


def _names(cells: list[dict[str, Any]], most: int = 6) -> str:
    names = ", ".join(label(r) for r in cells[:most])
    return f"Cells: {names}" + (f" and {len(cells) - most} more." if len(cells) > most else ".")


def kinds_table(rows: list[dict[str, Any]], events: dict[str, list[dict[str, Any]]]) -> Table:
    """Per variant: cells, and how many of them had each kind of event."""
    kinds = sorted({e["kind"] for evs in events.values() for e in evs})
    per: dict[str, Counter[str]] = {}
    cells: Counter[str] = Counter()
    for r in rows:
        cells[r["variant"]] += 1
        per.setdefault(r["variant"], Counter()).update({e["kind"] for e in events.get(r["cell_id"], [])})
    body = [[v, str(cells[v]), *[str(per[v][k]) if per[v][k] else "" for k in kinds]] for v in sorted(cells)]
    return Table(["variant", "cells", *kinds], body, id="event-kinds",
                 caption="Cells with each kind of event, per variant" if kinds else "No cell recorded an event")


def flagged_blocks(shown: list[tuple[dict[str, Any], dict[str, Any] | None, str]],
                   events: dict[str, list[dict[str, Any]]], diags: dict[str, list[dict[str, Any]]],
                   folder: Path) -> list[Any]:
    """The table of the cells shown (each has diagnostics and an event) and their small multiples."""
    body = []
    for r, _, why in shown:
        text = "; ".join(f"{e['kind']} at step {e['step'] if e['step'] is not None else '—'}"
                         + (f" in {e['layer']}" if e["layer"] else "") + f": {e['detail']}"
                         for e in events[r["cell_id"]])
        body.append([label(r), why, text])
    blocks: list[Any] = [Table(["cell", "why it is listed", "events"], body, id="flagged-cells",
                               caption="Diverged cells, and variant cells that scored worse than the baseline "
                                       "cell of the same seed, that recorded diagnostics and an event")]
    drawn = shown[:MAX_FIGURES]
    for r, base, _ in drawn:
        name = f"happened_{_slug(r['cell_id'])}.png"
        small_multiples(folder / name, r, base, diags, events.get(r["cell_id"], []))
        against = "against the baseline cell of the same seed" if base is not None else "(no paired baseline cell)"
        blocks.append(Image(name, f"diagnostics of {label(r)}", f"{label(r)} {against}"))
    if len(shown) > len(drawn):
        blocks.append(Para(f"Figures are drawn for the first {len(drawn)} cells of the table only; the other "
                           f"{len(shown) - len(drawn)} have their events in the table and no figure."))
    return blocks


def panel_series(row: dict[str, Any], records: list[dict[str, Any]], name: str, how: str) -> list[tuple[int, float]]:
    """(step, value) of one panel: the training loss from the curve, else a measure combined over layers."""
    if name == "train_loss":
        return [(int(c["step"]), float(c["train_loss"])) for c in row.get("curve") or []
                if c.get("train_loss") is not None]
    by_step: dict[int, dict[str, float]] = {}
    for d in records:
        if d["name"] == name and d["value"] is not None and math.isfinite(d["value"]):
            by_step.setdefault(int(d["step"]), {})[d["layer"]] = float(d["value"])
    out = []
    for step, layers in sorted(by_step.items()):
        if how == "global":
            v = layers.get("")
        elif how == "last":
            v = layers[max(layers, key=_layer_order)]
        else:
            vals = [x for k, x in layers.items() if k]
            v = (max(vals) if how == "max" else statistics.fmean(vals)) if vals else None
        if v is not None:
            out.append((step, v))
    return out


def _layer_order(layer: str) -> tuple[int, int, str]:
    stack, _, index = layer.partition(".")
    return (stack == "decoder", int(index) if index.isdigit() else -1, layer)


def small_multiples(path: Path, row: dict[str, Any], base: dict[str, Any] | None,
                    diags: dict[str, list[dict[str, Any]]], events: list[dict[str, Any]]) -> Path:
    """One panel per diagnostic, the cell against its baseline cell; event steps as dotted lines."""
    from matplotlib.figure import Figure

    cols = 4
    rows_n = math.ceil(len(PANELS) / cols)
    fig = Figure(figsize=(3.1 * cols, 2.4 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, (name, how, title, log) in zip(axes, PANELS, strict=False):
        ys: list[float] = []
        for r, colour, who in ((base, BASELINE_COLOUR, "baseline"), (row, CELL_COLOUR, row["variant"])):
            if r is None:
                continue
            pts = panel_series(r, diags.get(r["cell_id"], []), name, how)
            if pts:
                ax.plot(*zip(*pts, strict=True), color=colour, lw=1.5, marker="." if len(pts) < 30 else None,
                        label=who)
                ys += [y for _, y in pts]
        for e in events:
            if e["step"] is not None:
                ax.axvline(e["step"], color=EVENT_COLOUR, lw=0.8, ls=":")
        if log and ys and min(ys) > 0 and max(ys) / min(ys) > 20:  # log only across more than a decade
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(PANELS):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(label(row) + "  (dotted: events)", fontsize=10)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def escape_rows(a: Any, events: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """Per training-sensitivity setting: each seed's plateau-escape step, the median, and how many never left."""
    settings = a.plateau()
    if not settings:
        return []
    steps: dict[tuple[str, str, str], list[int | None | str]] = {}
    for r in a.rows:
        key = (r["task"], r["variant"], json.dumps(r.get("hparams") or {}, sort_keys=True))
        plateau = [e for e in events.get(r["cell_id"], []) if e["kind"] == "plateau"]
        steps.setdefault(key, []).append(plateau[0]["step"] if plateau else "—")
    out = []
    for st in settings:
        got = steps.get((st.task, st.variant, json.dumps(st.hparams, sort_keys=True)), [])
        left = sorted(s for s in got if isinstance(s, int))
        never = sum(1 for s in got if s is None)
        shown = [str(s) for s in left] + ["never"] * never + ["—"] * sum(1 for s in got if s == "—")
        out.append([f"{st.task} / {st.variant} / {st.label}", str(len(got)), ", ".join(shown),
                    f"{statistics.median(left):g}" if left else "—", f"{never}/{len(got)}"])
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"
