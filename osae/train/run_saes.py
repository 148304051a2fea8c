"""The SAEs an `osae fit` command line asks for: from --arch and its settings, or a sweep / config file's list
with settings, --lr and --seeds given on the command line applied to it.

Settings options are named after the architecture fields (osae.train.arch_settings); each applies to the
architectures that have that field, and naming one that no SAE of the run has is an error.
"""

from __future__ import annotations

from dataclasses import replace

from osae.errors import UsageError
from osae.train.arch_settings import setting_names, settings
from osae.train.architectures import ARCHITECTURES
from osae.train.config import SAESpec

SETTINGS = {s.name: s for s in settings()}


def _not_a_setting(name: str, archs: list[str]) -> UsageError:
    s = SETTINGS[name]
    return UsageError(f"{s.option} is a setting of {', '.join(s.archs)}, not of {', '.join(archs)}")


def specs_from_options(arch: str, seeds: list[int], lr: float | None, values: dict) -> list[SAESpec]:
    """One SAE of `arch` per seed, with the settings `values` (field -> value; the others take defaults)."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    for name in values:
        if name not in setting_names(arch):
            raise _not_a_setting(name, [arch])
    if not seeds:
        raise UsageError("--seeds lists no seed")
    return [SAESpec(arch=arch, seed=seed, config=dict(values), lr=lr) for seed in seeds]


def override_specs(
    specs: list[SAESpec], values: dict, *, lr: float | None = None, seeds: list[int] | None = None
) -> list[SAESpec]:
    """`specs` with each setting in `values` replaced in every SAE whose architecture has it, every lr replaced
    by `lr` (if given), and, if `seeds` is given, every distinct SAE (architecture, settings, lr) trained once
    per seed instead of with its own seeds."""
    archs = sorted({s.arch for s in specs})
    for name in values:
        if not any(name in setting_names(a) for a in archs):
            raise _not_a_setting(name, archs)
    changed = [
        SAESpec(
            arch=s.arch,
            seed=s.seed,
            lr=s.lr if lr is None else lr,
            config={**s.config, **{k: v for k, v in values.items() if k in setting_names(s.arch)}},
            dead_window_tokens=s.dead_window_tokens,
        )
        for s in specs
    ]
    if seeds is None:
        return changed
    distinct: list[SAESpec] = []
    for s in changed:
        if not any({**d.to_dict(), "seed": 0} == {**s.to_dict(), "seed": 0} for d in distinct):
            distinct.append(s)
    return [replace(d, seed=seed, config=dict(d.config)) for d in distinct for seed in seeds]
