"""Architecture settings, derived from the registry: what `osae fit` offers as options, how a spec's settings
are parsed into the architecture's config, and the settings table of docs/fit.md.

Every field of every config dataclass in `ARCHITECTURES` (d_in aside: it comes from the store) is one
`Setting`; fields of the same name in several architectures are one setting (one option) that applies to
each of them. The help text is the field's docstring, so the code, `--help` and the docs say the same.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import MISSING, dataclass, fields

from osae.config_io import known_keys, typed_value
from osae.errors import UsageError
from osae.field_docs import field_docs
from osae.train.architectures import ARCHITECTURES, SAEConfig

# Settings whose option name is not the field name (kept from the first osae CLI).
OPTION_NAMES = {"d_sae": "--dict-size"}
BOUND_BY_STORE = ("d_in",)


@dataclass(frozen=True)
class Setting:
    """One architecture field across the registry."""

    name: str
    type: typing.Any
    """The field's type (resolved), e.g. int, float | None, list[int] | None."""
    docs: dict[str, str]
    """Architecture -> the field's docstring there."""
    defaults: dict[str, typing.Any]
    """Architecture -> the field's default there (the architectures that have the field, registry order)."""

    @property
    def archs(self) -> list[str]:
        return list(self.defaults)

    @property
    def option(self) -> str:
        return OPTION_NAMES.get(self.name, "--" + self.name.replace("_", "-"))

    @property
    def is_list(self) -> bool:
        return typing.get_origin(_non_none(self.type)) is list

    def scope(self) -> str:
        """Which architectures the setting applies to, in words."""
        every = len(self.archs) == len(ARCHITECTURES)
        text = "all architectures" if every else ", ".join(self.archs)
        if self.name == "k":
            ignoring = [a for a in self.archs if not ARCHITECTURES[a][0].uses_k]
            if ignoring:
                text += f"; ignored by {', '.join(ignoring)}"
        return text

    def doc(self) -> str:
        """The docstring, or each architecture's where they differ."""
        texts = list(dict.fromkeys(self.docs.values()))
        if len(texts) == 1:
            return texts[0]
        return "; ".join(f"{a}: {d.rstrip('.')}" for a, d in self.docs.items()) + "."

    def default_text(self) -> str:
        """The default(s) in words; empty when it is None everywhere (the docstring says what None means)."""
        shown = {a: d for a, d in self.defaults.items() if d is not None}
        values = list(dict.fromkeys(_fmt(d) for d in shown.values()))
        if not values:
            return ""
        if len(values) == 1 and len(shown) == len(self.defaults):
            return values[0]
        return ", ".join(f"{a} {_fmt(d)}" for a, d in shown.items())

    def help(self) -> str:
        default = self.default_text()
        return f"{self.doc()} ({self.scope()})" + (f"  [default: {default}]" if default else "")

    def from_text(self, text: str):
        """The value of a command-line string: list settings are comma-separated."""
        if not self.is_list:
            return text
        item = typing.get_args(_non_none(self.type))[0]
        try:
            return [item(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"{self.option} takes comma-separated {item.__name__}s; got {text!r}") from None


def _non_none(tp):
    """`X` of `X | None` (other types unchanged)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every architecture setting, in first-seen order (shared fields first)."""
    found: dict[str, dict] = {}
    for arch, (cfg_cls, _) in ARCHITECTURES.items():
        hints, docs = typing.get_type_hints(cfg_cls), field_docs(cfg_cls)
        for f in fields(cfg_cls):
            if f.name in BOUND_BY_STORE:
                continue
            entry = found.setdefault(f.name, {"type": hints[f.name], "docs": {}, "defaults": {}})
            if entry["type"] != hints[f.name]:
                raise TypeError(
                    f"setting {f.name} has type {entry['type']} in one architecture, {hints[f.name]} in {arch}"
                )
            if f.name not in docs:
                raise TypeError(f"{cfg_cls.__name__}.{f.name} has no docstring (it is the --help text)")
            entry["docs"][arch] = docs[f.name]
            entry["defaults"][arch] = _default(f)
    return tuple(Setting(name, **entry) for name, entry in found.items())


def setting_names(arch: str) -> list[str]:
    """The settings of `arch` (its config fields but d_in), in declaration order."""
    return [f.name for f in fields(ARCHITECTURES[arch][0]) if f.name not in BOUND_BY_STORE]


def parse_arch_config(arch: str, values: dict, *, strict: bool = True) -> SAEConfig:
    """`values` (settings as a dict, without d_in) as `arch`'s config dataclass, d_in unbound. Unknown keys
    are one ValueError naming them, the architecture and the valid keys (`strict`; else a warning);
    wrong types and values (`__post_init__`) are ValueErrors starting with the architecture."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    if not isinstance(values, dict):
        raise UsageError(f"{arch} settings must be a mapping of names to values; got {values!r}")
    cfg_cls = ARCHITECTURES[arch][0]
    kept = known_keys(values, setting_names(arch), arch, strict=strict)
    hints = typing.get_type_hints(cfg_cls)
    try:
        typed = {k: typed_value(v, hints[k], k) for k, v in kept.items()}
        return cfg_cls(**typed)
    except ValueError as exc:
        raise UsageError(f"{arch}: {exc}") from None


def architectures_table() -> str:
    """Markdown: each setting, its architectures, default and meaning (docs/fit.md embeds it)."""
    rows = ["| setting | `osae fit` option | architectures | default | meaning |", "|---|---|---|---|---|"]
    for s in settings():
        meaning = s.doc().replace("|", "\\|")
        rows.append(f"| `{s.name}` | `{s.option}` | {s.scope()} | {s.default_text() or '-'} | {meaning} |")
    return "\n".join(rows) + "\n"
