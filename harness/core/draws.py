"""Where a model's initial random draws come from: one global stream, or one stream per place.

``ModelSpec.init_draws`` chooses:

``global``      every tensor is drawn from the global generator in construction order (what
                PyTorch code does after ``torch.manual_seed``; the harness's behaviour before
                this field existed, kept by the ``torch`` profile, whose layers must draw exactly
                what ``torch.nn.TransformerEncoderLayer`` draws for the same generator state).
``per_module``  common random numbers (Law & Kelton, *Simulation Modeling and Analysis*, ch. 11,
                "correlated sampling"): the draws of a component depend only on the cell's seed
                and the component's place in the model (``decoder.blocks.1.ffn``), and an init
                scheme draws each parameter from the seed and the parameter's name. A variant
                that reshapes one tensor (SwiGLU's extra gate, another ``d_ff``) then leaves every
                other tensor exactly where the baseline of the same seed starts it, so the two
                arms of a paired comparison share their initialisation noise and the paired
                difference measures the modification, not two independent draws.

Per-place draws reseed the CPU generator (and the current CUDA device's when the model is built
there) from ``sha256(seed/place)``; the generator state the caller had is restored after the
build, so a build changes no random stream outside the model (dropout, data order).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from modtransfer.core.spec import INIT_DRAWS

_MASK = (1 << 63) - 1


def place_seed(seed: int, place: str) -> int:
    """A 63-bit generator seed determined by ``(seed, place)`` alone (stable across runs and machines)."""
    digest = hashlib.sha256(f"{int(seed)}/{place}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK


def _cuda_device() -> int | None:
    """The CUDA device a build on the default device would draw on, or None (CPU, meta)."""
    device = torch.get_default_device()
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class Draws:
    """The init draws of one build: a no-op for ``global`` draws or without a seed.

    ``at(place)`` reseeds the generators for the component or tensor at ``place``; ``scope()``
    brackets a build so the caller's generator state is restored after it.
    """

    def __init__(self, seed: int | None, scheme: str = "global") -> None:
        if scheme not in INIT_DRAWS:
            raise ValueError(f"init_draws must be one of {INIT_DRAWS}, got {scheme!r}")
        self.seed = int(seed) if seed is not None and scheme == "per_module" else None

    @property
    def active(self) -> bool:
        return self.seed is not None

    def at(self, place: str) -> None:
        """Reseed for ``place`` (per-module draws only)."""
        if self.seed is None:
            return
        s = place_seed(self.seed, place)
        torch.default_generator.manual_seed(s)
        cuda = _cuda_device()
        if cuda is not None:
            with torch.cuda.device(cuda):
                torch.cuda.manual_seed(s)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Restore the generator state the caller had once the build is done (per-module draws only)."""
        if self.seed is None:
            yield
            return
        cuda = _cuda_device()
        with torch.random.fork_rng(devices=[] if cuda is None else [cuda]):
            yield


def draws_of(model: nn.Module) -> Draws:
    """The draws of a built model: per place when it was built with a seed and ``per_module`` draws.

    Init schemes call this to draw each parameter from ``(seed, parameter name)``; a model built
    without a seed (or with ``global`` draws) gives a no-op, so schemes then draw in order from
    the global generator as before.
    """
    spec = getattr(model, "spec", None)
    return Draws(getattr(model, "init_seed", None), getattr(spec, "init_draws", "global"))
