"""The gate before ``run``: plugin variants must pass the contract before anything trains.

A benchmark is only as honest as its variants: a plugin whose decoder sees the future, or
whose outputs depend on padding, would train to a *better* score than the baseline and be
reported as a gain. :func:`gate` runs the contract suite (:func:`~modtransfer.check.contract.run_contract`)
on every variant expression of a plan that uses plugin code (combinations such as
``my_attention+swiglu`` included) on the plan's tasks, and returns one line per failed check.
Built-in-only expressions are skipped: the test suite checks every built-in on every task.

Results are cached in ``cache_dir/gate.json``, keyed by the expression, the task, the digest
of the plugin code it uses (:func:`~modtransfer.core.variant.code_digest`) and a fingerprint of
the package, so a second ``run`` of unchanged code pays nothing, and an edited plugin is
checked again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import torch

from modtransfer.check.contract import CONTRACT_SPEC, CheckResult, run_contract
from modtransfer.core.cache import read_json, write_json
from modtransfer.core.digest import code_digest, plugin_entries, plugin_source_files
from modtransfer.core.spec import SLOTS
from modtransfer.core.variant import canonical, parse_variant, resolve

CACHE_FILE = "gate.json"
_KEEP = 512   # cached (expression, task) results kept, newest last


def _package_fingerprint() -> str:
    """Changes whenever a module of the package changes (the contract and the built-ins).

    Sizes and modification times of the package's ``.py`` files, and the torch version: cheap,
    and any edit (or a checkout) re-checks instead of trusting an old verdict.
    """
    h = hashlib.sha256(torch.__version__.encode())
    for name in ("modtransfer", "modtransfer.variants", "modtransfer.tasks"):
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for f in sorted(Path(folder).glob("*.py")):
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _key(expr: str, task: str, digest: str, fingerprint: str, data_dir: Path | None) -> str:
    blob = json.dumps([expr, task, digest, fingerprint, str(data_dir) if data_dir else None])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def plugin_args(expr: str) -> str:
    """`` --plugin FILE`` for each ``--plugin`` file the expression's code comes from (for the hint;
    entry points load by themselves)."""
    loaded = {Path(file).resolve() for name, m in list(sys.modules.items())
              if name.startswith("modtransfer_plugin_") and (file := getattr(m, "__file__", None))}
    spec = resolve(expr, CONTRACT_SPEC).spec
    used = {("variant", p.name) for p in parse_variant(expr)} | {(slot, getattr(spec, slot)) for slot in SLOTS}
    files = sorted({f for kind, name, obj in plugin_entries() if (kind, name) in used
                    for f in plugin_source_files(obj) if f in loaded})
    return "".join(f" --plugin {shlex.quote(str(f))}" for f in files)


def gate(variant_exprs: list[str], task_names: list[str], cache_dir: Path, *,
         data_dir: Path | None = None) -> list[str]:
    """Contract failures of the plan's plugin variants, one line each (empty: all may train).

    ``variant_exprs``: the plan's variant expressions (``baseline`` and built-in-only ones are
    skipped); ``task_names``: the tasks they will train on; ``cache_dir``: where ``gate.json``
    lives. Checks use synthetic batches (no data is touched) unless ``data_dir`` names a task
    cache with prepared data. Each line names the variant, the task, the check and what went
    wrong, and the command that shows every check. Unknown names and impossible combinations
    raise :class:`~modtransfer.core.errors.UserError` (the plan has already been checked, so they
    should not occur).
    """
    path = Path(cache_dir) / CACHE_FILE
    cache = read_json(path)
    fingerprint = ""
    lines: list[str] = []
    dirty = False
    for raw in dict.fromkeys(variant_exprs):
        expr = canonical(raw)
        digest = code_digest(expr)
        if not digest:
            continue  # built-ins only: the test suite checks them on every task
        fingerprint = fingerprint or _package_fingerprint()
        results: list[CheckResult] = []
        for task in task_names:
            key = _key(expr, task, digest, fingerprint, data_dir)
            hit = cache.get(key)
            if hit is None:
                found = run_contract(expr, [task], cache_dir=data_dir, use_data=data_dir is not None)
                hit = [[r.check, r.status, r.detail] for r in found]
                cache.pop(key, None)
                cache[key] = hit
                dirty = True
            results += [CheckResult(expr, task, check, status, detail) for check, status, detail in hit]
        failed = [r for r in results if r.status == "failed"]
        if failed:
            hint = f"modtransfer check {shlex.quote(expr)} --tasks {{task}}{plugin_args(expr)}"
            for r in failed:
                detail = " ".join(r.detail.split())
                lines.append(f"variant {expr!r} fails the contract on task {r.task!r}, check {r.check!r}: {detail}; "
                             f"details: {hint.format(task=r.task)}")
    if dirty:
        write_json(path, cache, _KEEP)
    return lines
