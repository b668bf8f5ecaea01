"""A plugin with a syntax error on line 6: `run --plugin` must name this file and line."""

from modtransfer import register_variant  # noqa: F401


def broken(:
    pass
