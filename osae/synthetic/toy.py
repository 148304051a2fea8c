"""The Gaussian toy data of the OSAE paper (methods.md section 5.1), written as a store with its ground truth.

d-dimensional samples x = D* y: K unit atoms with Zipf(alpha) frequency prior, m distinct active atoms per
sample drawn by weighted sampling without replacement, half-normal coefficients, no noise and no bias.
Atom order = decreasing prior = the ground-truth order. Seeds: seed -> D*; (seed+1, b) -> seed block b (rows
4096 b .. 4096 b + 4095) of the training codes; (seed+2, b) -> that of the validation codes, or with
held_out="test" (seed+3, b) -> that of the test codes (the store's evaluation split). A test store shares D*
and the training rows with its validation store, so settings chosen on one are scored on unseen rows. The
codes are generated, written and stored sparse (`sampling.py`), so memory does not grow with n or K * n.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from osae.errors import UsageError
from osae.progress import progress as progress_bar
from osae.store import StoreWriter, hook_spec
from osae.synthetic.sampling import SEED_BLOCK_ROWS, decode, iter_codes, zipf_prior

CODE_INDICES, CODE_VALUES = "code_indices", "code_values"  # ground_truth/ array names (store-format.md)

log = logging.getLogger(__name__)
TOY_HOOK = "toy"


HELD_OUT_SEED = {"validation": 2, "test": 3}  # offsets from the seed (methods.md 5.1)


@dataclass
class ToyConfig:
    d: int = 80
    """Activation width."""
    n_atoms: int = 100
    """Ground-truth dictionary size K."""
    m: int = 5
    """Active atoms per sample."""
    n: int = 100_000
    """Training samples (rows)."""
    n_eval: int = 10_000
    """Held-out validation samples (the evaluation split)."""
    alpha: float = 1.2
    """Zipf exponent of the frequency prior."""
    seed: int = 0
    held_out: str = "validation"
    """Which held-out rows form the evaluation split: validation (seed+2) or test (seed+3), same D*."""

    def __post_init__(self) -> None:
        for name in ("d", "n_atoms", "m", "n", "n_eval"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive; got {getattr(self, name)}")
        if self.held_out not in HELD_OUT_SEED:
            raise UsageError(f"held_out must be validation or test; got {self.held_out!r}")
        if self.m > self.n_atoms:
            raise UsageError(f"m must be in [1, n_atoms={self.n_atoms}]; got {self.m}")


def toy_dictionary(rng: np.random.Generator, n_atoms: int, d: int) -> np.ndarray:
    atoms = rng.standard_normal((n_atoms, d)) / np.sqrt(d)
    return (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).astype(np.float32)


def _chunk_rows(n: int) -> int:
    """A chunk size that divides the training rows, so the evaluation rows start on a chunk boundary."""
    for rows in range(min(n, 16384), 63, -1):
        if n % rows == 0:
            return rows
    return min(n, 16384)


def _rebatch(blocks: Iterator[tuple[np.ndarray, ...]], rows: int) -> Iterator[tuple[np.ndarray, ...]]:
    """The rows of `blocks` (tuples of row arrays) regrouped into tuples of `rows` rows (the last may be shorter)."""
    pending: list[tuple[np.ndarray, ...]] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += len(block[0])
        while held >= rows:
            merged = pending[0] if len(pending) == 1 else tuple(np.concatenate(parts) for parts in zip(*pending))
            yield tuple(a[:rows] for a in merged)
            pending, held = [tuple(a[rows:] for a in merged)], held - rows
    if held:
        yield tuple(np.concatenate(parts) for parts in zip(*pending))


def toy_rows(cfg: ToyConfig, dictionary: np.ndarray, prior: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """The store's rows in order, training then held-out, as (x (r, d) float32, indices (r, m) int32, values
    (r, m) float32) blocks of at most SEED_BLOCK_ROWS rows."""
    for stream_seed, n in ((cfg.seed + 1, cfg.n), (cfg.seed + HELD_OUT_SEED[cfg.held_out], cfg.n_eval)):
        for indices, values in iter_codes(stream_seed, n, prior, cfg.m):
            yield decode(indices, values, dictionary), indices, values


def write_toy_store(
    out, cfg: ToyConfig, *, overwrite: bool = False, write_rows: int = SEED_BLOCK_ROWS, progress: bool = False
) -> dict:
    """Write `cfg`'s toy data to the store `out`: the training rows, then the held-out rows (the evaluation split),
    then the ground truth (dictionary, prior, sparse codes). Returns rows, chunk_rows and eval_chunks.

    Rows are generated one seed block at a time and handed to the writers `write_rows` rows at a time, so memory
    is the writer's shard buffer plus a few (write_rows, d) arrays whatever n and K; the data do not depend on
    `write_rows`."""
    if write_rows <= 0:
        raise UsageError(f"write_rows must be positive; got {write_rows}")
    prior = zipf_prior(cfg.n_atoms, cfg.alpha)
    dictionary = toy_dictionary(np.random.default_rng(cfg.seed), cfg.n_atoms, cfg.d)
    rows = cfg.n + cfg.n_eval
    cr = _chunk_rows(cfg.n)
    first_eval = -(-cfg.n // cr)
    eval_chunks = list(range(first_eval, -(-rows // cr)))
    writer = StoreWriter.create(
        out,
        hooks={TOY_HOOK: hook_spec(None, cfg.d, "float32", hook="synthetic")},
        has_tokens=False,
        # "osae.store.toy" is where this generator first lived; the recorded name is kept for continuity.
        provenance={
            "model": None,
            "dataset": {"id": "osae-gaussian-toy", **asdict(cfg)},
            "generator": "osae.store.toy",
        },
        chunk_rows=cr,
        split={"rule": "explicit-chunks", "eval_chunks": eval_chunks},
        overwrite=overwrite,
    )
    try:
        codes = writer.ground_truth_rows(
            {CODE_INDICES: ((rows, cfg.m), "int32"), CODE_VALUES: ((rows, cfg.m), "float32")}
        )
        with progress_bar(rows, "toy", "row", enabled=progress, unit_scale=True) as bar:
            for x, indices, values in _rebatch(toy_rows(cfg, dictionary, prior), write_rows):
                writer.write({TOY_HOOK: x})
                codes.write({CODE_INDICES: indices, CODE_VALUES: values})
                bar.update(len(x))
        codes.close()
        writer.write_ground_truth(
            {"dictionary": dictionary, "prior": prior.astype(np.float32)},
            {
                "order": "decreasing prior",
                "config": asdict(cfg),
                "codes": "sparse",
                "seed_block_rows": SEED_BLOCK_ROWS,
            },
        )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"rows": rows, "chunk_rows": cr, "eval_chunks": eval_chunks}
