"""Which library wrote a checkpoint directory, from the files in it.

osae                 config.json + sae.safetensors
saelens              cfg.json + sae_weights.safetensors      (SAELens v5 and v6, SAE.save_model)
sparsify             cfg.json + sae.safetensors              (EleutherAI sparsify, one hookpoint directory)
dictionary_learning  ae.pt + config.json                     (saprmarks/dictionary_learning, one trainer_i)
"""

from __future__ import annotations

from pathlib import Path

from osae.errors import MissingInputError, UsageError

LAYOUTS: dict[str, tuple[str, ...]] = {
    "osae": ("config.json", "sae.safetensors"),
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
    "dictionary_learning": ("ae.pt", "config.json"),
}
FORMATS = tuple(LAYOUTS)


def matching_formats(path: Path) -> list[str]:
    return [fmt for fmt, files in LAYOUTS.items() if all((path / f).is_file() for f in files)]


def is_checkpoint(path, format: str | None = None) -> bool:
    """True when `path` is a checkpoint directory of some format, or of `format` (what a run directory's
    children are tested by)."""
    path = Path(path)
    found = matching_formats(path) if path.is_dir() else []
    return bool(found) if format is None else format in found


def _found(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
    return shown or "nothing"


def layout_summary(path: Path) -> str:
    """'found <files>; expected <each format's files>' for a directory that is no checkpoint."""
    expected = "; ".join(f"{fmt}: {' + '.join(files)}" for fmt, files in LAYOUTS.items())
    return f"found {_found(path)}; expected {expected}"


def detect_format(path, format: str | None = None) -> str:
    """The format of checkpoint directory `path`; `format` overrides detection but its files must be there."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path} does not exist")
    if not path.is_dir():
        raise UsageError(f"{path} is a file; pass the checkpoint directory that holds it")
    if format is not None:
        if format not in LAYOUTS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
        missing = [f for f in LAYOUTS[format] if not (path / f).is_file()]
        if missing:
            raise UsageError(
                f"{path} is not a {format} checkpoint: it lacks {', '.join(missing)} (found {_found(path)})"
            )
        return format
    found = matching_formats(path)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"{path} is no checkpoint osae reads ({layout_summary(path)})")
    raise UsageError(f"{path} has the files of {' and '.join(found)}; pass --format to say which to read")
