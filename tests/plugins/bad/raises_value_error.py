"""A plugin raising ValueError while it is imported: `run --plugin` must name the file and line."""

from __future__ import annotations


def _configure() -> None:
    raise ValueError("raises_value_error: bad plugin setting")


_configure()
