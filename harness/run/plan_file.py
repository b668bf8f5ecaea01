"""Reading a plan file safely: size, encoding, YAML shape (aliases, depth, duplicate keys), and the
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


MAX_PLAN_BYTES = 1 << 20     # a plan is a few hundred bytes; a megabyte is not a plan
MAX_YAML_ALIASES = 100       # anchors/aliases are fine for sharing a budget, not for a "billion laughs"
MAX_YAML_DEPTH = 20          # a plan nests three or four levels
MAX_CELLS = 5000             # above this a plan needs --yes
HARD_MAX_CELLS = 1_000_000   # never, even with --yes
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
WANDB_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SEED_LIMIT = 2**32           # numpy and CUDA generators take seeds below 2**32


class _PlanLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys instead of keeping the last one."""

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


def _check_yaml_shape(text: str, where: str) -> None:
    """Bound aliases and nesting depth from the event stream, before anything is expanded."""
    aliases = depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise UserError(f"plan {where} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                                "write the values out instead")
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise UserError(f"plan {where} nests deeper than {MAX_YAML_DEPTH} levels (line {line}); "
                                "a plan needs three or four")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def read_plan_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {str(p)!r} not found; pass the path of a plan YAML (e.g. configs/bench/smoke.yaml)")
    try:
        size = p.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise UserError(f"plan {p} is {size} bytes, not a plan YAML (at most {MAX_PLAN_BYTES}); check the path")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"plan {p} is not a UTF-8 text file; pass a plan YAML (e.g. configs/bench/smoke.yaml)") from None
    except OSError as exc:
        raise UserError(f"cannot read plan {p}: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise UserError(f"plan {p} is a binary file, not a plan YAML; check the path")
    try:
        _check_yaml_shape(text, str(p))
        data = yaml.load(text, Loader=_PlanLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"plan {p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise UserError(f"plan {p} nests too deeply to read; a plan needs three or four levels") from None
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


