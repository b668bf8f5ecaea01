"""How calls, ratios and intervals are written in the report's tables."""

from __future__ import annotations

import math

from .doc import TableCell

SYMBOLS = {"better": "▲ better", "worse": "▼ worse", "no change": "= no change", "unclear": "? unclear",
           "varies": "≈ varies", "unstable": "✗ unstable", "missing": "— missing", "too few seeds": "… too few seeds",
           "not learned": "○ baseline did not learn"}


def call_cell(call: str) -> TableCell:
    return TableCell(SYMBOLS.get(call, call), f"c-{call.replace(' ', '-')}")


def ratio(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.3g}×"


def ci_text(ci: tuple[float, float] | None, n: int) -> str:
    if ci is None:
        return "none (1 seed)" if n == 1 else "—"
    return f"[{ci[0]:+.3g}, {ci[1]:+.3g}]"


def last_error_line(error: str | None, limit: int = 300, empty: str = "(no reason recorded)") -> str:
    """The line of a stored error that says what went wrong (a traceback's last line), cut to ``limit``."""
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    if not lines:
        return empty
    text = lines[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
