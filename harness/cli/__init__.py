"""The command line: the only layer that prints for the user (see the README's Architecture section)."""

from .commands import main

__all__ = ["main"]
