"""osae: ordered sparse autoencoders on language-model activations.

The Python API (docs/python.md, osae.api): `load_sae`, `LoadedSAE`, `open_store`, `evaluate_checkpoints`.
They are imported on first use, so that `import osae` (and every CLI start) stays free of torch and zarr.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would double the cost of `import osae`

_API = ("LoadedSAE", "evaluate_checkpoints", "load_sae", "open_store")

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports them
    from osae.api import LoadedSAE, evaluate_checkpoints, load_sae, open_store


def __getattr__(name: str):
    if name in _API:
        import osae.api

        return getattr(osae.api, name)
    raise AttributeError(f"module 'osae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


__all__ = ["__version__", "LoadedSAE", "evaluate_checkpoints", "load_sae", "open_store"]
