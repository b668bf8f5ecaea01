"""The table of ``modtransfer bench speed``: per-fit medians, medians over repeats, and the printed
(or Markdown) table with its targets line."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from modtransfer.bench.speed_loops import FitTimes

#: targets at the default size on a 2-core CPU (printed next to the measurements, never asserted)
TARGETS = {"harness/plain": 0.97, "ours/x-tf": 1.15, "mfu": 0.60, "ls_s": 1.0, "startup_s": 1.0}


def median_of(xs: Sequence[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None



def summarise_fit(t: FitTimes, flops_per_token: float, warmup: int, steps: int, startup_s: float | None,
                  peak_flops: float) -> dict[str, Any]:
    """One fit's medians over its timed iterations (per-iteration ratios, so load drifts cancel)."""
    window = range(warmup, min(warmup + steps, len(t.harness)))
    if not window:
        raise RuntimeError("no timed iterations: increase --steps")
    tok = [t.tokens[i] for i in window]
    out: dict[str, Any] = {
        "harness_tok_s": statistics.median(tok[k] / t.harness[i] for k, i in enumerate(window)),
        "mfu": statistics.median(3 * flops_per_token * t.tokens[i] / t.harness[i] / peak_flops for i in window),
        "startup_s": startup_s,
    }
    for name, secs in t.plain.items():
        key = name.replace(" ", "_").replace("-", "")
        out[f"{key}_tok_s"] = statistics.median(tok[k] / secs[i] for k, i in enumerate(window))
    out["harness_over_plain"] = statistics.median(t.plain["plain"][i] / t.harness[i] for i in window)
    for name in ("x-tf", "x-tf flash"):
        if name in t.plain:
            key = name.replace(" ", "_").replace("-", "")
            out[f"ours_over_{key}"] = statistics.median(t.plain[name][i] / t.plain["plain"][i] for i in window)
    if "plain fp32" in t.plain:  # ours in bf16 against ours in fp32, same loop, same batches
        out["bf16_speedup"] = statistics.median(t.plain["plain fp32"][i] / t.plain["plain"][i] for i in window)
    return out


def aggregate(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of every per-fit number."""
    return {k: median_of([rep.get(k) for rep in repeats]) for k in repeats[0]}


# -- the table ------------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


#: the table's columns: header and the cell text of a row
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("params", lambda r: f"{r['params'] / 1e6:.2f}M"),
    ("GFLOP/tok", lambda r: f"{3 * r['flops_per_token'] / 1e9:.4f}"),
    ("harness tok/s", lambda r: _fmt(r.get("harness_tok_s"), ".0f")),
    ("plain tok/s", lambda r: _fmt(r.get("plain_tok_s"), ".0f")),
    ("harness/plain", lambda r: _fmt(r.get("harness_over_plain"), ".3f")),
    ("x-tf tok/s", lambda r: _fmt(r.get("xtf_tok_s"), ".0f")),
    ("ours/x-tf", lambda r: _fmt(r.get("ours_over_xtf"), ".3f")),
    ("x-tf flash tok/s", lambda r: _fmt(r.get("xtf_flash_tok_s"), ".0f")),
    ("ours/x-tf flash", lambda r: _fmt(r.get("ours_over_xtf_flash"), ".3f")),
    ("bf16/fp32", lambda r: _fmt(r.get("bf16_speedup"), ".3f")),
    ("MFU", lambda r: _pct(r.get("mfu"))),
    ("peak MiB", lambda r: _fmt(r.get("peak_mib"), ".0f")),
    ("start-up s", lambda r: _fmt(r.get("startup_s"), ".3f")),
]


def format_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The one table (plus its header lines and the targets) that ``bench speed`` prints
    (``markdown``: the table as Markdown, as the README shows it)."""
    shape, peak = res["shape"], res["peak"]
    columns = [c for c in COLUMNS if c[0] != "bf16/fp32" or res["precision"] == "bf16"]
    header = ["variant", *(c[0] for c in columns)]
    body = [[name, *(fn(r) for _, fn in columns)] for name, r in res["rows"].items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        if markdown:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    sizes = ", ".join(f"{n}^3 {f / 1e9:.1f}" for n, f in peak["by_size"].items())
    methods = sorted({r.get("memory_method") for r in res["rows"].values() if r.get("memory_method")})
    out = [
        f"bench speed: task {res['task']}, size {res['size']} (d_model {shape['d_model']}, {shape['n_layers']} layers, "
        f"{shape['n_heads']} heads, d_ff {shape['d_ff']}, vocab {shape['vocab_size']}), batch {res['batch_size']} x "
        f"seq {res['seq_len']}; {res['device']} ({res['device_name']}), {res['threads']} threads, torch {res['torch']}, "
        f"precision {res['precision']}" + (", torch.compile" if res["compile"] else ""),
        f"{res['steps']} timed steps after {res['warmup']} warm-up, {res['repeats']} repeats; medians of per-iteration "
        "values over steps, then over repeats; paths interleaved step by step",
        f"matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak['dtype']} torch.mm, best of {peak['repeats']} repeats "
        f"at each size: {sizes} GFLOP/s; cached per machine); MFU = 3 x forward FLOPs/token x harness tok/s / peak",
        f"{res['xtf_note']}; ours/x-tf = our plain loop / x-transformers in the same loop and precision (baseline only; "
        "'flash' = attn_flash=True)" + ("; bf16/fp32 = our plain loop in bf16 / in fp32" if res["precision"] == "bf16" else ""),
        "",
        line(header), "|" + "---|" * len(header) if markdown else line(["-" * w for w in widths]),
        *(line(b) for b in body), "",
        f"peak MiB: one cell in a fresh process, {', '.join(methods) or 'not measured'}; start-up s: run_cell "
        f"startup_s in a warm process (cold first cell: {_fmt(res['cold_startup_s'], '.3f')} s)",
        f"`modtransfer ls variants` (accounting cache warm): {_fmt(res['ls_s'], '.3f')} s wall (median)"
        if res["ls_s"] is not None else "`modtransfer ls variants`: not timed (--no-ls)",
    ]
    out.append(targets_line(res))
    return "\n".join(out)


def targets_line(res: dict[str, Any]) -> str:
    """Each target against the baseline row (informative; nothing here fails)."""
    base = res["rows"].get("baseline", {})
    worst_ratio = _min([r.get("harness_over_plain") for r in res["rows"].values()])
    checks = [
        ("harness/plain (worst row)", worst_ratio, TARGETS["harness/plain"], ">=", ".3f"),
        ("ours/x-tf", base.get("ours_over_xtf"), TARGETS["ours/x-tf"], ">=", ".3f"),
        ("ours/x-tf flash", base.get("ours_over_xtf_flash"), TARGETS["ours/x-tf"], ">=", ".3f"),
        ("MFU (baseline)", base.get("mfu"), TARGETS["mfu"], ">=", ".3f"),
        ("ls variants s", res.get("ls_s"), TARGETS["ls_s"], "<", ".2f"),
        ("warm start-up s (worst row)", _max([r.get("startup_s") for r in res["rows"].values()]), TARGETS["startup_s"],
         "<", ".3f"),
    ]
    parts = []
    for label, value, target, op, spec in checks:
        if value is None:
            parts.append(f"{label} n/a")
            continue
        ok = value >= target if op == ">=" else value < target
        parts.append(f"{label} {format(value, spec)} {op} {target:g}: {'met' if ok else 'MISSED'}")
    return "targets: " + "; ".join(parts)


def _min(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return min(known) if known else None


def _max(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return max(known) if known else None

