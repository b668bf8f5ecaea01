"""Transfer analysis of a results store: statistics, verdicts, plots, HTML + Markdown, W&B push.

Reads only ``RUN_DIR/results.sqlite`` (never W&B). Entry point: :func:`build_report`. Imports
stay lazy: importing this package loads neither numpy, matplotlib nor wandb.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Settings

__all__ = ["build_report"]


def build_report(run_dir: Path, *, wandb_mode: str = "offline", wandb_report: bool = False,
                 settings: Settings | None = None, out_dir: Path | None = None) -> Path:
    """Write ``RUN_DIR/report/`` (or ``out_dir``) and return the path of its ``index.html`` (see :mod:`.build`)."""
    from .build import build_report as _build

    return _build(Path(run_dir), wandb_mode=wandb_mode, wandb_report=wandb_report, settings=settings,
                  out_dir=out_dir)


def __getattr__(name: str) -> Any:
    if name == "Settings":
        from .records import Settings

        return Settings
    raise AttributeError(name)
