"""Learning-rate schedules: linear warm-up, then inverse square root, cosine, linear or constant.

Inverse square root as in Vaswani et al. 2017 (lr ~ step^-1/2 after warm-up); cosine as in
Loshchilov & Hutter 2017 (SGDR, arXiv 1608.03983) without restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(schedule: str, steps: int, warmup_frac: float) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at a (0-based) optimiser step."""
    warm = max(1, round(steps * warmup_frac)) if warmup_frac > 0 else 0

    def fn(step: int) -> float:
        s = step + 1
        if warm and s <= warm:
            return s / warm
        if schedule == "constant":
            return 1.0
        if schedule == "inverse_sqrt":
            return math.sqrt(max(warm, 1) / s)
        progress = min(1.0, (s - warm) / max(1, steps - warm))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        raise ValueError(f"unknown schedule {schedule!r}")

    return fn
