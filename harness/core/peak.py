"""The machine's matmul peak, the denominator of model-FLOP utilisation (MFU).

MFU is the model's FLOP rate over the hardware's (Chowdhery et al. 2022, PaLM, arXiv
2204.02311, appendix B): 3 x forward FLOPs per token x tokens/s over the peak. A vendor's
datasheet peak does not exist for a shared CPU, so the peak is measured: the best FLOP/s of
square ``torch.mm`` products over a few sizes and repeats (a bigger product often runs closer
to the peak than a smaller one, and any single reading can lose the core to another process),
in the cell's precision (fp32 or bf16). The best, not a median, so MFU is never flattered by
an unlucky probe. It is measured once per machine and kept in ``$MODTRANSFER_CACHE/matmul_peak.json``
under a key of the processor (or GPU) model, torch version, precision and thread count; a
later measurement only raises the cached value.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from modtransfer.core.cache import read_json, write_json
from modtransfer.core.precision import cpu_model, resolve_precision

PEAK_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
PEAK_REPEATS = 8
_FILE = "matmul_peak.json"
_KEEP = 64


def matmul_flops(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """The best FLOP/s of ``repeats`` n x n x n products (after one untimed product)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b, out=c)  # first-call set-up (threads, kernels, packing) outside every reading
    best = 0.0
    for _ in range(max(1, repeats)):
        sync()
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        sync()
        best = max(best, 2.0 * n**3 / max(time.perf_counter() - start, 1e-12))
    return best


def measure_peak(device: torch.device | str = "cpu", precision: str = "auto", sizes: tuple[int, ...] | None = None,
                 repeats: int = PEAK_REPEATS) -> dict[str, Any]:
    """Measure now: ``{"flops": best FLOP/s, "n": its size, "dtype": ..., "by_size": {n: FLOP/s}}``."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device.type)
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float32
    chosen: tuple[int, ...] = sizes if sizes else PEAK_SIZES.get(device.type, (1024,))
    by_size = {n: matmul_flops(n, dtype, device, repeats) for n in chosen}
    n = max(by_size, key=by_size.__getitem__)
    return {"flops": by_size[n], "n": n, "dtype": str(dtype).replace("torch.", ""), "precision": resolved,
            "by_size": {str(k): v for k, v in by_size.items()}, "repeats": repeats}


def peak_key(device: torch.device | str, precision: str) -> str:
    """What the peak depends on: processor (or GPU) model, torch version, resolved precision, threads."""
    device = torch.device(device)
    model = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    resolved = resolve_precision(precision, device.type)
    return f"{device.type}|{model}|torch {torch.__version__}|{resolved}|{torch.get_num_threads()} threads"


def machine_peak(device: torch.device | str = "cpu", precision: str = "auto", cache_dir: Path | None = None,
                 remeasure: bool = False) -> dict[str, Any]:
    """The cached peak of this machine (measured on first use; ``remeasure`` measures again and keeps the best)."""
    if cache_dir is None:
        from modtransfer.core.task import default_cache_dir

        cache_dir = default_cache_dir()
    path = Path(cache_dir) / _FILE
    key = peak_key(device, precision)
    data = read_json(path)
    old = data.get(key)
    if isinstance(old, dict) and isinstance(old.get("flops"), int | float) and old["flops"] > 0 and not remeasure:
        return old
    new = measure_peak(device, precision)
    if isinstance(old, dict) and isinstance(old.get("flops"), int | float) and old["flops"] > new["flops"]:
        new = old
    data.pop(key, None)
    data[key] = new
    write_json(path, data, _KEEP)
    return new
