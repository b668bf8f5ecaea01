"""Training precision: fp32, or bf16 mixed precision (autocast) on CUDA and on CPUs that compute in bf16.

Mixed precision keeps fp32 master weights and optimiser state and runs matmuls (and the other
ops autocast lists) in a 16-bit format (Micikevicius et al. 2018, "Mixed Precision Training",
arXiv 1710.03740). bfloat16 keeps fp32's 8-bit exponent, so no loss scaling is needed
(Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training", arXiv 1905.12322).

A plan's ``precision`` is one of:

* ``auto`` (default): bf16 autocast on CUDA, fp32 elsewhere (what cells always did);
* ``fp32``: fp32 everywhere;
* ``bf16``: bf16 autocast; on a CPU only where the processor has native bf16 instructions
  (``avx512_bf16`` or ``amx_bf16``): elsewhere bf16 is emulated, slower than fp32, and refused.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any, Literal

from modtransfer.core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: what Lightning's ``Trainer(precision=...)`` is given, by resolved precision
LightningPrecision = Literal["32-true", "bf16-mixed"]
LIGHTNING: dict[str, LightningPrecision] = {"fp32": "32-true", "bf16": "bf16-mixed"}


def check_precision(value: Any, where: str = "plan.precision") -> str:
    """``value`` if it names a precision, else one line naming the choices."""
    if value not in PRECISIONS:
        raise UserError(f"{where} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


@cache
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_flag() -> str | None:
    """The CPU flag that gives native bf16 matmuls here (``amx_bf16`` first), or None."""
    flags = cpu_flags()
    return next((f for f in CPU_BF16_FLAGS if f in flags), None)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def resolve_precision(precision: str, accel: str) -> str:
    """The precision a cell trains in on device kind ``accel``: ``fp32`` or ``bf16``.

    ``bf16`` on a CPU without native bf16 instructions is a user error (one line, the fix).
    """
    check_precision(precision, "precision")
    kind = accel.split(":", 1)[0]
    if precision == "auto":
        return "bf16" if kind == "cuda" else "fp32"
    if precision == "bf16" and kind == "cpu" and cpu_bf16_flag() is None:
        raise UserError("precision bf16: this CPU has no native bf16 instructions (avx512_bf16 or amx_bf16), "
                        "so bf16 would be slower than fp32; use precision: fp32 (or auto)")
    return precision


def lightning_precision(resolved: str) -> LightningPrecision:
    """Lightning's ``Trainer(precision=...)`` for a resolved precision."""
    return LIGHTNING[resolved]


def autocast(device_type: str, resolved: str) -> AbstractContextManager[Any]:
    """The autocast context of a plain training loop at a resolved precision (a no-op for fp32)."""
    if resolved == "bf16":
        import torch

        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
