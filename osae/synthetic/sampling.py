"""Sparse codes of the Gaussian toy (methods.md 5.1), drawn block by block in memory independent of the atom count.

A code row is m distinct atoms drawn by successive weighted sampling without replacement from the prior, with
half-normal coefficients; it is kept sparse (atom indices, increasing, and their values), never as a (rows, K)
array. Rows come in seed blocks of `SEED_BLOCK_ROWS`: block b of a stream is drawn from the generator seeded by
(stream seed, b), so row r is the same however many rows are generated or written at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SEED_BLOCK_ROWS = 4096
# The Gumbel fallback holds (rows, K) float64 keys: at most this many entries (32 MiB) at a time.
_FALLBACK_KEYS = 2**22


def zipf_prior(n_atoms: int, alpha: float) -> np.ndarray:
    """(K,) float64 frequency prior pi_j proportional to j^-alpha, j = 1..K."""
    p = np.arange(1, n_atoms + 1, dtype=np.float64) ** (-alpha)
    return p / p.sum()


def sample_supports(
    rng: np.random.Generator, n: int, prior: np.ndarray, m: int, *, max_rounds: int | None = None
) -> np.ndarray:
    """(n, m) int32: m distinct atoms per row by successive sampling without replacement with weights `prior`,
    sorted increasing within each row.

    Each round draws one atom per unfinished row from the full prior and keeps it unless the row already has it.
    The first new atom of such a sequence of draws is distributed as the prior renormalized over the atoms not
    yet taken, which is exactly the next draw without replacement; so a row costs about m draws, not K keys.
    Rows still unfinished after `max_rounds` (when a few atoms hold nearly all the mass and m is close to K) are
    completed by Gumbel-top on the atoms they lack, which continues the same successive sampling exactly.
    """
    n_atoms = len(prior)
    cdf = np.cumsum(prior)
    cdf /= cdf[-1]
    cdf[-1] = 1.0  # draws are in [0, 1), so searchsorted never runs past the last atom
    chosen = np.full((n, m), -1, np.int32)
    filled = np.zeros(n, np.intp)
    rounds = 8 * m + 64 if max_rounds is None else max_rounds
    for _ in range(rounds):
        rows = np.flatnonzero(filled < m)
        if not len(rows):
            break
        draw = np.searchsorted(cdf, rng.random(len(rows)), side="right").astype(np.int32)
        new = ~(chosen[rows] == draw[:, None]).any(axis=1)
        rows, draw = rows[new], draw[new]
        chosen[rows, filled[rows]] = draw
        filled[rows] += 1
    if (filled < m).any():
        _finish_by_gumbel(rng, chosen, filled, np.log(prior), n_atoms)
    chosen.sort(axis=1)
    return chosen


def _finish_by_gumbel(
    rng: np.random.Generator, chosen: np.ndarray, filled: np.ndarray, log_prior: np.ndarray, n_atoms: int
) -> None:
    """Fill the empty slots of unfinished rows in place: the atoms they lack, in decreasing order of Gumbel keys
    log(prior) + G, is successive sampling without replacement from the renormalized remaining prior."""
    m = chosen.shape[1]
    unfinished = np.flatnonzero(filled < m)
    step = max(1, _FALLBACK_KEYS // n_atoms)
    for lo in range(0, len(unfinished), step):
        rows = unfinished[lo : lo + step]
        keys = log_prior[None, :] + rng.gumbel(size=(len(rows), n_atoms))
        r, slot = np.nonzero(chosen[rows] >= 0)
        keys[r, chosen[rows][r, slot]] = -np.inf  # atoms a row already has
        need = m - filled[rows]
        top = int(need.max())
        best = np.argpartition(-keys, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(keys, best, axis=1), axis=1)
        best = np.take_along_axis(best, order, axis=1)
        for s in range(top):
            take = s < need
            chosen[rows[take], filled[rows[take]] + s] = best[take, s]
        filled[rows] = m


def seed_block_codes(stream_seed: int, block: int, prior: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed block `block` of a stream: (indices (SEED_BLOCK_ROWS, m) int32, values (SEED_BLOCK_ROWS, m) float32)."""
    rng = np.random.default_rng([stream_seed, block])
    indices = sample_supports(rng, SEED_BLOCK_ROWS, prior, m)
    # Half-normal coefficients: |N(0, 1)| removes the sign ambiguity of each atom (methods.md 5.1 step 4).
    values = np.abs(rng.standard_normal((SEED_BLOCK_ROWS, m))).astype(np.float32)
    return indices, values


def iter_codes(stream_seed: int, n: int, prior: np.ndarray, m: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The first n code rows of a stream as (indices, values) blocks of SEED_BLOCK_ROWS rows (the last may be
    shorter: it is a prefix of the full seed block, so row r never depends on n)."""
    for block in range(-(-n // SEED_BLOCK_ROWS)):
        indices, values = seed_block_codes(stream_seed, block, prior, m)
        rows = min(SEED_BLOCK_ROWS, n - block * SEED_BLOCK_ROWS)
        yield indices[:rows], values[:rows]


def decode(indices: np.ndarray, values: np.ndarray, dictionary: np.ndarray) -> np.ndarray:
    """x = y D* for sparse code rows: (rows, d) float32 from indices/values (rows, m) and the (K, d) atoms.

    One gathered (rows, d) slab per active slot, so memory stays at a few (rows, d) arrays whatever K or m."""
    x = np.zeros((len(indices), dictionary.shape[1]), np.float32)
    for s in range(indices.shape[1]):
        x += values[:, s : s + 1] * dictionary[indices[:, s]]
    return x
