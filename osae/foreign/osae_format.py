"""osae's own frozen checkpoints through the same entry point as the foreign formats."""

from __future__ import annotations

from pathlib import Path

from osae.train.checkpoint import load_frozen


def load_osae(path: Path, device="cpu") -> tuple:
    sae, cfg = load_frozen(path, device=device)
    return sae, {**cfg, "format": "osae", "source": str(path)}
