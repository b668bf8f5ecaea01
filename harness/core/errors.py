"""User-facing errors.

Everything a user can cause (a bad name, a bad plan, a missing file, data that cannot be
fetched) raises :class:`UserError`. The CLI prints its message as one line and exits with
code 2, before anything trains and before anything is written.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""

    exit_code = 2


class UnknownNameError(UserError, KeyError):
    """An unknown registry name; the message carries close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConflictError(UserError):
    """Two things claim the same name or the same spec field."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choices, or an empty string."""
    close = difflib.get_close_matches(name, sorted(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
