"""A plugin calling sys.exit at import: the CLI must not end silently."""

from __future__ import annotations

import sys

sys.exit(3)
