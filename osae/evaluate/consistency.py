"""Decoder consistency between two dictionaries: Stab and Ord from a Hungarian matching of atoms
(methods.md 4.3; OSAE paper sections 2.7-2.8).

C = D^T D' (signed cosines of unit atoms); mu = argmax over permutations of sum_j C[j, mu(j)];
Stab = mean matched cosine; Ord = Spearman correlation of (j, mu(j)) = 1 - 6 sum (j - mu(j))^2 / (K (K^2 - 1)).
Prefix-wise curves truncate both dictionaries to their first p atoms, then match p x p.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from osae.evaluate.matching import Matching
from osae.evaluate.sparse_matching import sparse_match


def unit_rows(W: torch.Tensor | np.ndarray) -> np.ndarray:
    W = np.asarray(W.detach().cpu().double() if torch.is_tensor(W) else W, dtype=np.float64)
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def match(D_a, D_b, *, exact_limit: int = 4096) -> Matching:
    """Hungarian matching of the rows (atoms) of two dictionaries, maximising the summed signed cosine."""
    A, B = unit_rows(D_a), unit_rows(D_b)
    if max(len(A), len(B)) > exact_limit:
        return sparse_match(A, B)
    C = A @ B.T
    r, c = linear_sum_assignment(C, maximize=True)
    return Matching(r, c, C[r, c], "dense")


def stab_ord(D_a, D_b, **kw) -> tuple[float, float]:
    m = match(D_a, D_b, **kw)
    return m.stab, m.ord


def prefix_curves(D_a, D_b, prefixes: list[int] | None = None) -> dict[int, dict[str, float]]:
    """{p: {"stab", "ord"}} matching the first p atoms of each dictionary (truncate, then match)."""
    K = min(len(D_a), len(D_b))
    if prefixes is None:
        prefixes = [p for p in (2**i for i in range(2, 40)) if p < K] + [K]
    out = {}
    for p in prefixes:
        m = match(np.asarray(unit_rows(D_a))[:p], np.asarray(unit_rows(D_b))[:p])
        out[int(p)] = {"stab": m.stab, "ord": m.ord}
    return out


class CodeCorrelation:
    """Streams the cross-moments of two codes over the same tokens and gives Stab_Z / Ord_Z (methods.md 4.4):
    S_ij = Pearson(z_a_i, z_b_j) over the tokens (0 for a latent that never varies), Hungarian on S."""

    def __init__(self, K_a: int, K_b: int):
        self.n = 0
        self.sa, self.sb = torch.zeros(K_a, dtype=torch.float64), torch.zeros(K_b, dtype=torch.float64)
        self.qa, self.qb = torch.zeros(K_a, dtype=torch.float64), torch.zeros(K_b, dtype=torch.float64)
        self.cross = torch.zeros(K_a, K_b, dtype=torch.float64)

    def add(self, z_a: torch.Tensor, z_b: torch.Tensor) -> None:
        za, zb = z_a.double(), z_b.double()
        self.n += len(za)
        self.sa += za.sum(0)
        self.sb += zb.sum(0)
        self.qa += (za * za).sum(0)
        self.qb += (zb * zb).sum(0)
        self.cross += za.T @ zb

    def correlation(self) -> np.ndarray:
        n = max(self.n, 1)
        cov = self.cross / n - torch.outer(self.sa / n, self.sb / n)
        va = (self.qa / n - (self.sa / n) ** 2).clamp_min(0)
        vb = (self.qb / n - (self.sb / n) ** 2).clamp_min(0)
        denom = torch.sqrt(torch.outer(va, vb))
        return torch.where(denom > 1e-20, cov / denom.clamp_min(1e-20), torch.zeros_like(cov)).numpy()

    def match(self) -> Matching:
        S = self.correlation()
        r, c = linear_sum_assignment(S, maximize=True)
        return Matching(r, c, S[r, c], "dense")
