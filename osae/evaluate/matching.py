"""The result of matching the atoms (or latents) of two dictionaries, and its Stab and Ord (methods.md 4.3).

Kept apart from the solvers so that the dense (consistency.py) and the sparse (sparse_matching.py) ones
both build it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr


@dataclass
class Matching:
    """Atom rows[i] of D is paired with atom cols[i] of D' at signed cosine cosines[i]; `method` names the
    solver ("dense", "sparse-top64", ...)."""

    rows: np.ndarray  # matched atom indices in D
    cols: np.ndarray  # their partners in D'
    cosines: np.ndarray
    method: str

    @property
    def stab(self) -> float:
        return float(self.cosines.mean()) if len(self.cosines) else float("nan")

    @property
    def ord(self) -> float:
        n = len(self.rows)
        if n < 2:
            return float("nan")
        if (
            len(np.unique(self.rows)) == n
            and np.array_equal(np.sort(self.rows), np.arange(n))
            and np.array_equal(np.sort(self.cols), np.arange(n))
        ):
            return float(1 - 6 * np.sum((self.rows - self.cols) ** 2) / (n * (n**2 - 1)))
        return float(spearmanr(self.rows, self.cols).statistic)  # unequal sizes: rank-transformed
