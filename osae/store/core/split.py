"""The held-out evaluation split: whole chunks chosen by a hash, whole sequences on both sides.

Chunk c is an evaluation chunk when a 64-bit hash of (c, seed) falls below `eval_fraction` (or it is
listed by an "explicit-chunks" rule). A sequence belongs to a split only if every chunk it touches is in
that split; the few sequences that straddle a train/eval chunk boundary are dropped from both, so no
context is shared. The kept rows of every chunk are then one contiguous interval, which keeps reads
chunk-aligned and needs no per-row masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osae.constants import SEQUENCES_GROUP
from osae.errors import UsageError
from osae.store.core.reader import ActivationStore

SPLITS = ("train", "eval", "all")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def eval_chunk_mask(split: dict, n_chunks: int, chunk_rows: int | None = None) -> np.ndarray:
    """Boolean mask over chunks: True for evaluation chunks.

    hash-chunks: chunk c is held out when its hash u_c < eval_fraction; with `min_eval_rows` (new stores), the
    chunks of smallest u_c are added until they hold that many rows, but never more than half the chunks. The
    fraction rule alone does not depend on the store's size; the minimum does, while the store is small."""
    mask = np.zeros(n_chunks, dtype=bool)
    if n_chunks == 0:
        return mask
    rule = split.get("rule", "hash-chunks")
    if rule == "explicit-chunks":
        listed = np.asarray(split.get("eval_chunks", []), dtype=np.int64)
        mask[listed[listed < n_chunks]] = True
        return mask
    if rule != "hash-chunks":
        raise UsageError(f"unknown split rule {rule!r}; expected 'hash-chunks' or 'explicit-chunks'")
    frac = float(split.get("eval_fraction", 0.0))
    if frac <= 0 or n_chunks < 2:
        return mask
    seed = int(split.get("seed", 0))
    h = _splitmix64(np.arange(n_chunks, dtype=np.uint64) ^ np.uint64(seed * 0x632BE59BD9B4E019 & _MASK64))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    mask = u < frac
    if not mask.any():
        mask[int(np.argmin(u))] = True  # every store with 2+ chunks has an evaluation split
    min_rows = int(split.get("min_eval_rows", 0))
    if min_rows and chunk_rows:
        wanted = min(-(-min_rows // chunk_rows), n_chunks // 2)
        if mask.sum() < wanted:
            mask[np.argsort(u, kind="stable")[:wanted]] = True  # a superset: the fraction's chunks have the smallest u
    return mask


@dataclass(frozen=True)
class SplitIntervals:
    """Kept rows of one split: chunk c contributes rows [lo, hi) (absolute row numbers)."""

    chunks: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return self.hi - self.lo

    @property
    def n_rows(self) -> int:
        return int(self.sizes.sum())


def split_intervals(store: ActivationStore, split: str) -> SplitIntervals:
    """The chunks of `split` ("train", "eval" or "all") and the interval of rows each one keeps."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}; got {split!r}")
    n, cr = store.n_tokens, store.chunk_rows
    n_chunks = store.n_chunks
    chunks = np.arange(n_chunks, dtype=np.int64)
    lo = chunks * cr
    hi = np.minimum(lo + cr, n)
    if split == "all":
        return SplitIntervals(chunks, lo, hi)
    is_eval = eval_chunk_mask(store.meta["split"], n_chunks, cr)
    if store.has_tokens and store.n_sequences:
        starts = store.array(f"{SEQUENCES_GROUP}/row_start")[: store.n_sequences]
        ends = np.append(starts[1:], n)
        first, last = starts // cr, (ends - 1) // cr
        for s in np.nonzero(first != last)[0]:
            a, b = int(first[s]), int(last[s])
            if is_eval[a : b + 1].all() or not is_eval[a : b + 1].any():
                continue  # the whole sequence lies on one side
            hi[a] = min(hi[a], starts[s])
            lo[b] = max(lo[b], ends[s])
            lo[a + 1 : b] = hi[a + 1 : b]
    keep = is_eval if split == "eval" else ~is_eval
    keep &= hi > lo
    return SplitIntervals(chunks[keep], lo[keep], hi[keep])
