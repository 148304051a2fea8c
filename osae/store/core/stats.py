"""Running per-dimension statistics of a hook's rows (sums in float64), kept in the commit record.

Readers turn them into mean, variance and mean squared norm (`ActivationStore.stats`); training's
normalization reads them instead of scanning the rows.
"""

from __future__ import annotations

import numpy as np

from osae.store.core.reader import to_float32


def row_stats(rows: np.ndarray, dtype: str, block: int = 16384) -> dict:
    """Per-dimension sums of finite rows (float64), their count, and how many rows were not finite."""
    d = rows.shape[1]
    out = {"count": 0, "sum": np.zeros(d), "sum_sq": np.zeros(d), "nonfinite_rows": 0}
    for i in range(0, len(rows), block):
        x = to_float32(rows[i : i + block], dtype).astype(np.float64)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            out["nonfinite_rows"] += int((~finite).sum())
            x = x[finite]
        out["count"] += len(x)
        out["sum"] += x.sum(axis=0)
        out["sum_sq"] += np.einsum("nd,nd->d", x, x)
    return out


def merge_stats(into: dict, add: dict) -> None:
    """Add the statistics `add` of more rows into `into`, in place."""
    for key in ("count", "nonfinite_rows"):
        into[key] += add[key]
    for key in ("sum", "sum_sq"):
        into[key] = np.asarray(into[key], np.float64) + np.asarray(add[key], np.float64)
