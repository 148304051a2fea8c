"""Reading configs back from JSON: unknown keys are ignored with a warning, so older files still load."""

from __future__ import annotations

import logging
from dataclasses import fields

log = logging.getLogger(__name__)


def known_fields(cls, d: dict, what: str) -> dict:
    """The entries of `d` that are fields of dataclass `cls` (warning about the others)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        log.warning("ignoring unknown %s settings %s", what, unknown)
    return {k: v for k, v in d.items() if k in known}
