"""Configs from JSON/YAML: key checks and typed values.

Two situations: a config *given* by the user (command line, sweep file, `--config FILE`) is checked strictly,
so a misspelt key is one clear error before anything runs; a config *read back* (a run's run.json on
--resume, a checkpoint's config.json) ignores unknown keys with a warning, so files of older versions load.
"""

from __future__ import annotations

import json
import logging
import types
import typing
from dataclasses import fields
from pathlib import Path

from osae.errors import MissingInputError, UsageError

log = logging.getLogger(__name__)


def known_fields(cls, d: dict, what: str, *, strict: bool = False) -> dict:
    """The entries of `d` that are fields of dataclass `cls`. Others: a ValueError naming them and the valid
    keys when `strict`, else a warning."""
    return known_keys(d, [f.name for f in fields(cls) if f.init], what, strict=strict)


def known_keys(d: dict, valid: list[str], what: str, *, strict: bool = False) -> dict:
    unknown = [k for k in d if k not in valid]
    if unknown and strict:
        names = ", ".join(repr(k) for k in unknown)
        raise UsageError(f"unknown {what} setting{'s' if len(unknown) > 1 else ''} {names}; valid: {', '.join(valid)}")
    if unknown:
        log.warning("ignoring unknown %s settings %s", what, sorted(unknown))
    return {k: v for k, v in d.items() if k in valid}


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}s" if args else "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def typed_value(value, tp, name: str):
    """`value` (as JSON/YAML gives it) checked against the field type `tp`: ints for int (integral floats
    such as 1e6 included), numbers for float, lists for list/tuple fields (tuples come back as tuples).
    Types it does not know (nested dataclasses) pass through. Raises ValueError naming `name`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return typed_value(value, option, name)
            except ValueError:
                pass
        raise UsageError(f"{name} must be {_describe(tp)}; got {value!r}")
    bad = UsageError(f"{name} must be {_describe(tp)}; got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else typing.Any
        items = (
            [typed_value(v, item, f"every entry of {name}") for v in value] if item is not typing.Any else list(value)
        )
        return tuple(items) if origin is tuple else items
    return value


def typed_fields(cls, d: dict, what: str) -> dict:
    """`d`'s values checked against the field types of dataclass `cls` (see `typed_value`)."""
    hints = typing.get_type_hints(cls)
    return {k: typed_value(v, hints[k], f"{what} setting {k!r}") if k in hints else v for k, v in d.items()}


def read_config_file(path: str | Path, what: str = "config") -> dict | list:
    """A JSON file, or YAML when the name ends in .yaml/.yml. One-line errors for a missing or malformed file
    (`what` names the file's role in them: config, sweep)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MissingInputError(f"no {what} file at {path}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{what} file {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} file {path} is not valid JSON ({exc})") from None
