"""Prefix-length laws of the ordered objective, given as inclusion weights pi_j = P(L >= j), j = 1..K.

pi is all the exact loss needs (methods.md section 3): a pair of atoms i, j is present in the truncated
reconstruction exactly when L >= max(i, j), with probability min(pi_i, pi_j). pi is non-increasing.
"""

from __future__ import annotations

import numpy as np
import torch

from osae.errors import UsageError

LAWS = ("uniform", "geometric", "zipf", "piecewise", "matryoshka-marginal", "custom")


def inclusion_weights(
    law: str,
    K: int,
    *,
    rho: float = 0.999,
    alpha: float = 1.2,
    widths: list[int] | None = None,
    masses: list[float] | None = None,
    p0: float = 0.0,
    groups: int = 5,
    b_min: int = 1,
    power: float = 0.5,
    custom: list[float] | None = None,
) -> torch.Tensor:
    """pi as a float64 tensor of length K (index 0 is latent 1)."""
    j = np.arange(1, K + 1, dtype=np.float64)
    if law == "uniform":
        pi = (K - j + 1) / K
    elif law == "geometric":
        if not 0 < rho < 1:
            raise UsageError(f"geometric rho must be in (0, 1); got {rho}")
        pi = rho ** (j - 1)  # the tail mass beyond K is folded onto L = K
    elif law == "zipf":
        p = j ** (-alpha)
        p /= p.sum()
        pi = np.cumsum(p[::-1])[::-1]
    elif law == "piecewise":
        widths = widths or default_widths(K)
        masses = masses or [1.0 / len(widths)] * len(widths)
        pmf = np.zeros(K)
        prev = 0
        for w, m in zip(widths, masses):
            pmf[prev:w] = m / (w - prev)  # group mass spread uniformly over its indices (prev, w]
            prev = w
        pmf /= pmf.sum()
        pi = np.cumsum(pmf[::-1])[::-1]
    elif law == "matryoshka-marginal":
        pi = matryoshka_marginal(K, groups, b_min, power)
    elif law == "custom":
        if custom is None:
            raise UsageError("a custom law needs its pmf over 1..K")
        p = np.asarray(custom, dtype=np.float64)
        if len(p) != K or (p < 0).any() or p.sum() <= 0:
            raise UsageError(f"a custom law needs {K} non-negative probabilities")
        p /= p.sum()
        pi = np.cumsum(p[::-1])[::-1]
    else:
        raise UsageError(f"prefix law must be one of {LAWS}; got {law!r}")
    return torch.from_numpy(np.clip(pi, 0, 1) * (1.0 - p0))


def default_widths(K: int) -> list[int]:
    """Cumulative Matryoshka widths K/16, K/8, K/4, K/2, K (methods.md sections 2.4 and 7)."""
    widths = sorted({max(1, K // 16), max(1, K // 8), max(1, K // 4), max(1, K // 2), K})
    return widths


def random_boundary_law(K: int, b_min: int = 1, power: float = 0.5) -> np.ndarray:
    """q(b) ∝ (b - b_min + 1)^power - (b - b_min)^power on b = b_min..K-1 (Nabeshima's heavy-headed law)."""
    b = np.arange(b_min, K, dtype=np.float64)
    q = (b - b_min + 1) ** power - (b - b_min) ** power
    return q / q.sum()


def sample_boundaries(rng: np.random.Generator, K: int, groups: int, b_min: int = 1, power: float = 0.5) -> np.ndarray:
    """G-1 distinct interior boundaries plus K, ascending (one draw, shared by the whole batch)."""
    q = random_boundary_law(K, b_min, power)
    inner = rng.choice(np.arange(b_min, K), size=min(groups - 1, len(q)), replace=False, p=q)
    return np.sort(np.append(inner, K)).astype(np.int64)


def boundaries_to_pi(boundaries: np.ndarray, K: int, weights: np.ndarray | None = None) -> torch.Tensor:
    """pi_j = (weighted) share of boundaries >= j: the Matryoshka loss as an expectation over prefixes."""
    w = np.ones(len(boundaries)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    j = np.arange(1, K + 1)
    pi = (w[None, :] * (np.asarray(boundaries)[None, :] >= j[:, None])).sum(1)
    return torch.from_numpy(pi)


def matryoshka_marginal(
    K: int, groups: int, b_min: int = 1, power: float = 0.5, draws: int = 4000, seed: int = 0
) -> np.ndarray:
    """E[#{b >= j}] / G under the random-boundary law, estimated from many draws (deterministic seed)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros(K)
    for _ in range(draws):
        acc += boundaries_to_pi(sample_boundaries(rng, K, groups, b_min, power), K).numpy()
    return acc / draws
