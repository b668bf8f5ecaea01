"""Size presets: named baseline shapes in ``configs/sizes/*.yaml``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from modtransfer.core.errors import UserError, did_you_mean
from modtransfer.core.spec import ModelSpec


def configs_dir() -> Path:
    """The ``configs/`` folder (a checkout's, or the installed package data)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "configs", here.parent / "configs"):  # checkout, installed package
        if (candidate / "sizes").is_dir():
            return candidate
    import importlib.resources

    return Path(str(importlib.resources.files("modtransfer.configs")))


def size_names() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "sizes").glob("*.yaml"))


@cache
def size_preset(name: str) -> ModelSpec:
    """The baseline ModelSpec of a size preset."""
    path = configs_dir() / "sizes" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown size preset {name!r}{did_you_mean(name, size_names())}; presets: {', '.join(size_names())}")
    data = yaml.safe_load(path.read_text()) or {}
    return ModelSpec.from_dict(data, where=f"size preset {path}")
