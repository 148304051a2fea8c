"""`--config FILE` with command-line overrides, shared by `osae fit` and `osae harvest`.

The file holds a stage's resolved config (what the run records: run.json, a harvest's dry run). Options
typed on the command line replace the file's values; the options' defaults only fill what the file lacks.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from osae.config_io import read_config_file
from osae.errors import UsageError


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the command's parameters whose value was typed on the command line (or set in the environment),
    as opposed to their defaults."""
    return {
        name
        for name in ctx.params
        if (src := ctx.get_parameter_source(name)) is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")
    }


def read_mapping(path: str) -> dict:
    """A `--config` file (JSON, or YAML by extension) that must hold one mapping."""
    d = read_config_file(path)
    if not isinstance(d, dict):
        raise UsageError(
            f"config file {path} must hold a mapping of settings (a run's resolved config); got a {type(d).__name__}"
        )
    return d


def merge_options(base: dict, values: dict[str, Any], given: set[str], fields: dict[str, str]) -> dict:
    """`base` (a config file's mapping) with the command's option values merged in: `fields` maps option
    parameter -> config field. A given option replaces the file's value; an option left at its default fills
    only a field the file lacks (and never with None)."""
    merged = dict(base)
    for param, name in fields.items():
        value = values[param]
        if param in given or (name not in merged and value is not None):
            merged[name] = list(value) if isinstance(value, tuple) else value
    return merged


def print_config(d: dict) -> None:
    """A resolved config on stdout, as JSON a later `--config` reads back."""
    typer.echo(json.dumps(d, indent=1))
