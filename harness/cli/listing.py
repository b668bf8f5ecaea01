"""``modtransfer ls``: the registries as tables, with parameter and FLOP accounting.

Counts are computed by building each variant's model on the ``meta`` device (no memory, no
arithmetic) at a size preset, for a nominal decoder LM (vocabulary 256) or, for variants that
need one, an encoder-decoder; they are never typed by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modtransfer.builtins import load_builtins
from modtransfer.core.components import COMPONENTS
from modtransfer.core.spec import SLOTS
from modtransfer.core.variant import VARIANTS, resolve

if TYPE_CHECKING:
    from modtransfer.core.spec import ModelSpec

NOMINAL_VOCAB = 256
NOMINAL_SEQ = 128


def _topology_for(meta: dict[str, Any]) -> str:
    need = set(meta.get("requires", ())) | set().union(*[set(g) for g in [meta.get("requires_any", ())]])
    if "encoder_decoder" in need:
        return "encoder_decoder"
    if "decoder" in need or "causal" in need or not need or "vocab" in need:
        return "decoder"
    return "encoder"


def _code_fingerprint() -> str:
    """Changes whenever the code of any registered component (built-in or plugin) changes."""
    import sys

    from modtransfer.core.cache import stat_digest

    files = {Path(__file__).resolve().parents[1] / "core" / "model.py"}
    for registry in COMPONENTS.values():
        for entry in registry.list():
            mod = sys.modules.get(getattr(entry.obj, "__module__", ""), None)
            path = getattr(mod, "__file__", None) if mod is not None else None
            if path:
                files.add(Path(path))
    return stat_digest(files).hexdigest()[:16]


class _CountCache:
    """Parameter/FLOP counts keyed by (spec, topology, sequence, code fingerprint), on disk."""

    def __init__(self) -> None:
        from modtransfer.core.task import default_cache_dir

        self.path = default_cache_dir() / "accounting.json"
        self.data: dict[str, list[float]] = {}
        self.dirty = False
        self.fingerprint = _code_fingerprint()
        try:
            blob = json.loads(self.path.read_text())
            if blob.get("fingerprint") == self.fingerprint:
                self.data = blob["counts"]
        except (OSError, ValueError, KeyError):
            pass

    def counts(self, spec: ModelSpec, topology: str, seq: int) -> tuple[int, float]:
        key = f"{spec.digest()}:{topology}:{seq}"
        if key not in self.data:
            from modtransfer.core.model import count_flops, count_params

            self.data[key] = [count_params(spec, topology), count_flops(spec, topology, seq)]
            self.dirty = True
        p, f = self.data[key]
        return int(p), float(f)

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "counts": self.data}))
            os.replace(tmp, self.path)
        except OSError:
            pass


_cache: _CountCache | None = None


def accounting(name: str, size: str, topology: str | None = None) -> dict[str, Any]:
    """Params and forward FLOPs/token of a variant and of the baseline at a size preset."""
    from modtransfer.core.sizes import size_preset

    global _cache
    if _cache is None:
        _cache = _CountCache()
    meta = VARIANTS.entry(name.split("(")[0].split("+")[0]).meta
    topo = topology or _topology_for(meta)
    base = size_preset(size).replace(vocab_size=NOMINAL_VOCAB)
    spec = resolve(name, base).spec
    seq = min(NOMINAL_SEQ, base.max_len)
    p, f = _cache.counts(spec, topo, seq)
    b, fb = _cache.counts(base, topo, seq)
    return {"topology": topo, "params": p, "params_base": b, "params_delta": 100.0 * (p - b) / b,
            "flops": f, "flops_base": fb, "flops_delta": 100.0 * (f - fb) / fb}


def save_count_cache() -> None:
    if _cache is not None:
        _cache.save()


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def list_variants(pattern: str | None = None, *, size: str = "small", markdown: bool = False,
                  counts: bool = True) -> str:
    load_builtins()
    entries = VARIANTS.list(pattern)
    order = {s: i for i, s in enumerate(("baseline",) + SLOTS + ("shape",))}
    entries.sort(key=lambda e: (order.get(e.meta["slot"], 99), e.name))
    header = ["variant", "slot", "description", "paper", "matches"]
    if counts:
        header += ["params", "Δparams", "FLOPs/tok", "ΔFLOPs"]
    rows = []
    for e in entries:
        row = [e.name, e.meta["slot"], e.meta["description"], e.meta["paper"] or "-", e.meta["matches"] or "-"]
        if counts:
            try:
                a = accounting(e.name, size)
                row += [_fmt_count(a["params"]), f"{a['params_delta']:+.1f}%", _fmt_count(a["flops"]),
                        f"{a['flops_delta']:+.1f}%"]
            except Exception as exc:  # a broken plugin variant shows as such, it does not break ls
                row += [f"error: {type(exc).__name__}", "", "", ""]
        rows.append(row)
    save_count_cache()
    title = (f"{len(rows)} variants; counts at size {size!r} for a decoder LM with vocabulary {NOMINAL_VOCAB} "
             f"(encoder-decoder where a variant needs one), FLOPs per token at sequence {NOMINAL_SEQ}"
             if counts else f"{len(rows)} variants")
    return _table(header, rows, markdown, title)


def list_tasks(pattern: str | None = None, *, markdown: bool = False) -> str:
    import modtransfer.tasks  # noqa: F401
    from modtransfer.core.task import TASKS

    rows = []
    for e in TASKS.list(pattern):
        cls = e.obj
        b = cls.default_budget
        rows.append([e.name, cls.topology, cls.description, f"{cls.primary_metric} ({'higher' if cls.higher_is_better else 'lower'} is better)",
                     f"{b.steps} steps x batch {b.batch_size}, lr {b.lr:g}", cls.credit or "-"])
    return _table(["task", "topology", "description", "primary metric", "default budget", "data credit"], rows,
                  markdown, f"{len(rows)} tasks")


def list_implementations(pattern: str | None = None, *, markdown: bool = False) -> str:
    """One row per implementation profile: description, source, and each default with its source."""
    from modtransfer.core.implementations import profile_defaults
    from modtransfer.core.profiles import IMPLEMENTATIONS

    load_builtins()
    header = ["implementation", "description", "source", "defaults"]
    rows, details = [], []
    for e in IMPLEMENTATIONS.list(pattern):
        defaults = profile_defaults(e.name)
        sep = "<br>" if markdown else "; "
        rows.append([e.name, e.meta["description"], e.meta["source"],
                     sep.join(f"{f}={v!r} ({src})" for f, v, src in defaults)])
        details.append(f"{e.name}: {e.meta['description']}")
        details.append(f"  source: {e.meta['source']}")
        details += [f"  {f} = {v!r}: {src}" for f, v, src in defaults]
    title = f"{len(rows)} implementations"
    if markdown:
        return _table(header, rows, True, title)
    table = _table(header[:3], [r[:3] for r in rows], False, title)
    return table + ("\n\n" + "\n".join(details) if details else "")


def list_components(pattern: str | None = None) -> str:
    load_builtins()
    rows = []
    for slot in SLOTS:
        for e in COMPONENTS[slot].list(pattern):
            rows.append([slot, e.name, e.meta.get("paper", "") or "-", e.origin.split(" (")[0]])
    return _table(["slot", "component", "paper", "defined in"], rows, False, f"{len(rows)} components")


def _table(header: list[str], rows: list[list[str]], markdown: bool, title: str) -> str:
    if markdown:
        out = [f"_{title}_", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(out)
    widths = [min(48, max(len(str(x)) for x in col)) for col in zip(header, *rows, strict=False)]

    def fmt(r: list[str]) -> str:
        return "  ".join((str(c) if len(str(c)) <= w else str(c)[: w - 1] + "…").ljust(w)
                         for c, w in zip(r, widths, strict=False)).rstrip()

    return "\n".join([title, fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


__all__ = ["accounting", "list_components", "list_implementations", "list_tasks", "list_variants"]
