"""Reading a plan file safely: size, encoding, YAML shape (no anchors or aliases, depth, duplicate keys), and the
one-line type and name checks every plan field uses (:class:`UserError`, exit code 2)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from modtransfer.core.errors import UserError


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {str: "a string", int: "an integer", list: "a list", dict: "a mapping", bool: "true/false",
            type(None): "null"}.get(t, t.__name__)


def check_type(where: str, value: Any, want: Any) -> None:
    ok = isinstance(value, want) and not (isinstance(value, bool) and want in (int, (int, list)))
    if not ok:
        raise UserError(f"{where} must be {_type_name(want)}, got {value!r}")


MAX_PLAN_BYTES = 256 * 1024  # a plan is a few hundred bytes; a quarter megabyte is not a plan
MAX_YAML_DEPTH = 20          # a plan nests three or four levels
MAX_CELLS = 5000             # above this a plan needs --yes
HARD_MAX_CELLS = 1_000_000   # never, even with --yes
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
WANDB_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SEED_LIMIT = 2**32           # numpy and CUDA generators take seeds below 2**32


class _PlanLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, while composing, what a plan never needs.

    * anchors (``&name``) and aliases (``*name``): refused at the first one, before any node that
      could repeat it is built, so a "billion laughs" document costs one event, not its expansion;
    * nesting deeper than :data:`MAX_YAML_DEPTH`: refused before Python's recursion limit is near;
    * duplicate keys: refused instead of keeping the last one.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            dumped = (" (PyYAML's dump writes &id001 for an object used twice: dump a copy of each)"
                      if re.fullmatch(r"id\d+", event.anchor or "") else "")
            raise UserError(f"plan line {line}: YAML anchors and aliases ({sign}{event.anchor}) are not read in "
                            f"a plan; write the value out where it is used{dumped}")
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if self._depth >= MAX_YAML_DEPTH:
                raise UserError(f"plan line {line}: nests deeper than {MAX_YAML_DEPTH} levels; a plan needs three "
                                "or four")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, list | dict):
                raise UserError(f"plan line {line}: a key must be a plain name, not {type(key).__name__}")
            if key in seen:
                raise UserError(f"plan line {line}: key {key!r} appears twice (first at line {seen[key]}); "
                                "keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_plan_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {str(p)!r} not found; pass the path of a plan YAML (e.g. configs/bench/smoke.yaml)")
    try:
        with p.open("rb") as f:  # never more than the limit in memory, whatever stat says
            blob = f.read(MAX_PLAN_BYTES + 1)
        if len(blob) > MAX_PLAN_BYTES:
            size = max(p.stat().st_size, len(blob))
            raise UserError(f"plan {p} is {size} bytes, more than a plan YAML may be ({MAX_PLAN_BYTES}); "
                            "check the path")
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"plan {p} is not a UTF-8 text file; pass a plan YAML (e.g. configs/bench/smoke.yaml)") from None
    except OSError as exc:
        raise UserError(f"cannot read plan {p}: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise UserError(f"plan {p} is a binary file, not a plan YAML; check the path")
    try:
        data = yaml.load(text, Loader=_PlanLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"plan {p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise UserError(f"plan {p} nests too deeply to read; a plan needs three or four levels") from None
    except UserError as exc:
        raise UserError(f"plan {p}: {str(exc).removeprefix('plan ')}") from None
    if not isinstance(data, dict):
        raise UserError(f"plan {p} must be a YAML mapping with keys like name, variants, tasks, seeds")
    return data


def check_name(what: str, value: str) -> str:
    """A name used as a folder: letters, digits, '.', '_', '-', not starting with '.', at most 100 characters."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
        raise UserError(f"{what} {shown!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                        "or digit (it names a folder)")
    return value


