"""Events that say *why* a cell ended as it did, detected from its loss curve and diagnostics.

Pure functions of a row's ``curve`` (``{"step", "train_loss"}`` records, the mean training
loss of each logging window) and its diagnostic records (``{"step", "name", "layer",
"value"}``, see :mod:`modtransfer.run.diagnostics`). An event is ``{"kind", "step", "layer",
"detail"}``; kinds:

``plateau``                  the loss sat at the trivial score (predicting the mean) for a while;
                             ``step`` is where it left, None if it never did (the detail says);
``loss_spike``               the loss jumped to :data:`SPIKE_FACTOR` x its recent median, then came back;
``divergence``               the cell diverged; ``layer`` is the layer whose gradient norm first rose
                             :data:`BLOWUP_FACTOR` x above the median of its earlier values (or went
                             NaN), searched from :data:`BLOWUP_LOOKBACK` steps before the onset;
``attention_collapse``       a layer's attention entropy ended near 0 (one-hot) or near 1 (uniform) after
                             having been away from it (Zhai et al. 2023, arXiv 2303.06296);
``representation_collapse``  the final hidden states lie on a line or a point (effective rank
                             <= :data:`ERANK_COLLAPSED`) or all point the same way (mean cosine
                             >= :data:`COS_COLLAPSED`); Dong et al. 2021, arXiv 2103.03404, on rank collapse;
``dead_units``               at least :data:`DEAD_SHARE` of a layer's FFN units were zero on every position;
``residual_growth``          a block's residual-stream RMS ended :data:`RESIDUAL_GROWTH` x above its start;
``diagnostics_error``        a measurement or detector failed (named in the detail); the cell is unaffected.

Each detector looks at the state where training ended (the last diagnostic record), so a
property every model has at initialisation (near-uniform attention) is not an event by itself.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

SPIKE_FACTOR = 2.0
BLOWUP_FACTOR = 10.0
#: a gradient may blow up this many steps before the loss crosses the divergence line
BLOWUP_LOOKBACK = 20
ENTROPY_ONE_HOT = 0.05
ENTROPY_UNIFORM = 0.98
#: how far (in normalised entropy) a layer must have moved away from the end state before, for the
#: end state to count as a collapse rather than where it started
ENTROPY_MOVED = 0.1
ERANK_COLLAPSED = 1.5
COS_COLLAPSED = 0.999
DEAD_SHARE = 0.5
RESIDUAL_GROWTH = 100.0
#: a plateau: at least this many logging windows in a row within the band around the trivial loss...
PLATEAU_WINDOWS = 3
#: ... spanning at least this share of the steps trained
PLATEAU_SHARE = 0.2


def event(kind: str, step: int | None, layer: str | None, detail: str) -> dict[str, Any]:
    return {"kind": kind, "step": step, "layer": layer, "detail": detail}


def series(records: list[dict[str, Any]], name: str) -> dict[str, list[tuple[int, float]]]:
    """Layer -> [(step, value)] of the records called ``name``, by step; NaN where not finite."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["name"] == name:
            v = r["value"]
            out[r["layer"]].append((int(r["step"]), float(v) if v is not None else math.nan))
    return {k: sorted(v) for k, v in out.items()}


def _losses(curve: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(c["step"]), float(c["train_loss"]) if c["train_loss"] is not None else math.nan)
            for c in curve if "train_loss" in c]


def plateau_event(curve: list[dict[str, Any]], level: float, fraction: float, steps: int) -> dict[str, Any] | None:
    """The plateau at the trivial loss ``level``: the longest run of logging windows whose loss lies
    within half the task's margin of it, level x (1 +- (1 - fraction) / 2), if the run is
    :data:`PLATEAU_WINDOWS` long and covers :data:`PLATEAU_SHARE` of ``steps`` (a loss that only
    passes through is no plateau). It was left at the first later window below ``fraction x
    level`` (the task's own line for "never left the plateau") after which it stayed below."""
    points = _losses(curve)
    if not points or not (level > 0 and 0 < fraction < 1):
        return None
    band = (1 - fraction) / 2
    low, high = level * (1 - band), level * (1 + band)
    best, run = (0, 0), None
    for i, (_, x) in enumerate(points):
        inside = low <= x <= high
        run = (i if run is None else run) if inside else None
        if run is not None and i + 1 - run > best[1] - best[0]:
            best = (run, i + 1)
    first, stop = best
    if stop - first < PLATEAU_WINDOWS:
        return None
    start_step = points[first - 1][0] if first else 0
    if points[stop - 1][0] - start_step < PLATEAU_SHARE * steps:
        return None
    span = f"train loss within {band:.0%} of the trivial {level:.4g} from step {start_step} to {points[stop - 1][0]}"
    for j in range(stop, len(points)):
        if all(x < fraction * level for _, x in points[j:]):
            return event("plateau", points[j][0], None, f"{span}; left it at step {points[j][0]}")
    final = points[-1][1]
    return event("plateau", None, None, f"{span}; never left it (final train loss {final:.4g})")


def spike_events(curve: list[dict[str, Any]], until: int | None = None, limit: int = 3) -> list[dict[str, Any]]:
    """Windows whose loss is :data:`SPIKE_FACTOR` x the median of the three before and that the
    loss came back from (the next window below the spike), up to step ``until``; the first ``limit``."""
    points = [(s, x) for s, x in _losses(curve) if until is None or s < until]
    out = []
    for i in range(2, len(points) - 1):
        step, x = points[i]
        ref = statistics.median(v for _, v in points[max(0, i - 3):i])
        if math.isfinite(x) and ref > 0 and x > SPIKE_FACTOR * ref and points[i + 1][1] < x:
            out.append(event("loss_spike", step, None, f"train loss {x:.4g}, {x / ref:.1f} x the median "
                                                       f"{ref:.4g} of the windows before; training recovered"))
    return out[:limit]


def blowups(per_layer: dict[str, list[tuple[int, float]]], since: int) -> list[tuple[str, int, float]]:
    """(layer, step, ratio) of each layer's first gradient blow-up at or after step ``since``,
    earliest first: a norm above :data:`BLOWUP_FACTOR` x the median of the layer's earlier
    values, or not finite. Layers blowing up at the same step are ordered by ratio (inf for
    NaN), then by their position in the model."""
    found = []
    for order, (layer, points) in enumerate(per_layer.items()):
        earlier: list[float] = []
        for s, v in points:
            if earlier and s >= since:
                ref = max(statistics.median(earlier), 1e-12)
                if not math.isfinite(v) or v > BLOWUP_FACTOR * ref:
                    ratio = v / ref if math.isfinite(v) else math.inf
                    found.append((s, -ratio, order, layer))
                    break
            if math.isfinite(v):
                earlier.append(v)
    return [(layer, s, -neg) for s, neg, _, layer in sorted(found)]


def divergence_event(row: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    if row.get("status") != "diverged":
        return None
    onset = row.get("failed_step")
    onset = int(onset) if onset is not None else int(row.get("steps") or 0)
    per_layer = series(records, "grad_norm")
    for layer, points in series(records, "grad_norm_step").items():
        per_layer[layer] = sorted(set(per_layer.get(layer, [])) | set(points))
    per_layer.pop("", None)
    found = blowups(per_layer, onset - BLOWUP_LOOKBACK)
    reason = (row.get("error") or "").splitlines()[0] if row.get("error") else "diverged"
    if not found:
        return event("divergence", onset, None, f"{reason}; no layer's gradient norm rose {BLOWUP_FACTOR:g} x "
                                                "before the stop (or no diagnostics were recorded)")
    layer, step, ratio = found[0]
    how = "became NaN/inf" if math.isinf(ratio) else f"rose {ratio:.3g} x its earlier level"
    same = sum(1 for _, s, _ in found[1:] if s == step)
    also = f" (the largest rise of {same + 1} layers blowing up at that step)" if same else ", before any other layer"
    return event("divergence", onset, layer, f"{reason}; the gradient of {layer} {how} at step {step}{also}")


def _last(points: list[tuple[int, float]]) -> tuple[int, float]:
    finite = [p for p in points if math.isfinite(p[1])]
    return finite[-1] if finite else points[-1]


def attention_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in ("attn_entropy", "attn_entropy_cross"):
        for layer, points in series(records, name).items():
            step, v = _last(points)
            values = [x for _, x in points if math.isfinite(x)]
            if not math.isfinite(v) or not values:
                continue
            where = layer + (" (cross-attention)" if name.endswith("cross") else "")
            if v <= ENTROPY_ONE_HOT and max(values) >= v + ENTROPY_MOVED:
                out.append(event("attention_collapse", step, where, f"attention entropy {v:.3f} of its maximum: "
                                                                    "one-hot (every query looks at one key)"))
            elif v >= ENTROPY_UNIFORM and min(values) <= v - ENTROPY_MOVED:
                out.append(event("attention_collapse", step, where, f"attention entropy {v:.3f} of its maximum: "
                                                                    "uniform (attention averages all keys)"))
    return out


def collapse_event(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Representation collapse of the last stack's final hidden states (decoder, else encoder)."""
    eranks, cosines = series(records, "hidden_erank"), series(records, "hidden_cos")
    stack = "decoder" if "decoder" in eranks else "encoder" if "encoder" in eranks else None
    if stack is None:
        return None
    step, erank = _last(eranks[stack])
    cos = _last(cosines.get(stack, [(step, math.nan)]))[1]
    if erank <= ERANK_COLLAPSED:
        what = "a single point" if erank == 0 else "one line"
        return event("representation_collapse", step, stack, f"final hidden states lie on {what} "
                                                             f"(effective rank {erank:.2f}; mean cosine {cos:.2f})")
    if cos >= COS_COLLAPSED:
        return event("representation_collapse", step, stack, f"final hidden states all point the same way "
                                                             f"(mean cosine {cos:.3f}; effective rank {erank:.2f})")
    return None


def unit_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead FFN units and residual streams that grew without bound, at the last record."""
    out = []
    for layer, points in series(records, "ffn_dead_frac").items():
        step, v = _last(points)
        if v >= DEAD_SHARE:
            out.append(event("dead_units", step, layer, f"{v:.0%} of the FFN's hidden units are zero at every "
                                                        "position of the batch"))
    for layer, points in series(records, "resid_rms").items():
        (_, first), (step, last) = points[0], _last(points)
        if first > 0 and last >= RESIDUAL_GROWTH * first:
            out.append(event("residual_growth", step, layer, f"residual-stream RMS grew {last / first:.3g} x "
                                                             f"(from {first:.3g} to {last:.3g})"))
    return out


def detect(row: dict[str, Any], records: list[dict[str, Any]],
           plateau: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """Every event of a cell's row, ordered by step (events without a step last).

    For a diverged cell the other detectors see only the records before the onset: what the
    blow-up did to the layers afterwards are consequences, not causes.
    """
    curve = row.get("curve") or []
    diverged = divergence_event(row, records)
    if diverged is not None:
        records = [r for r in records if r["step"] < diverged["step"]]
    found: list[dict[str, Any] | None] = list(spike_events(curve, until=diverged["step"] if diverged else None))
    if plateau is not None and diverged is None:
        found.append(plateau_event(curve, plateau[0], plateau[1], int(row.get("steps") or 0)))
    found += [diverged, collapse_event(records), *attention_events(records), *unit_events(records)]
    events = [e for e in found if e is not None]
    return sorted(events, key=lambda e: (e["step"] is None, e["step"] or 0))


def summary(events: list[dict[str, Any]], limit: int = 3) -> str:
    """One line: the first ``limit`` events, as ``kind@step (layer)``."""
    parts = [f"{e['kind']}@{e['step'] if e['step'] is not None else '-'}" + (f" ({e['layer']})" if e["layer"] else "")
             for e in events[:limit]]
    more = len(events) - limit
    return "; ".join(parts) + (f"; +{more} more" if more > 0 else "") if parts else "none"
