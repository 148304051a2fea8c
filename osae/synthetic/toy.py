"""The Gaussian toy data of the OSAE paper (methods.md section 5.1), written as a store with its ground truth.

d-dimensional samples x = D* y: K unit atoms with Zipf(alpha) frequency prior, m distinct active atoms per
sample drawn by weighted sampling without replacement, half-normal coefficients, no noise and no bias.
Atom order = decreasing prior = the ground-truth order. Seeds: seed -> D*, seed+1 -> training codes,
seed+2 -> validation codes (the store's evaluation split).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from osae.errors import UsageError
from osae.store import StoreWriter, hook_spec

log = logging.getLogger(__name__)
TOY_HOOK = "toy"


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

    def __post_init__(self) -> None:
        for name in ("d", "n_atoms", "m", "n", "n_eval"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive; got {getattr(self, name)}")
        if self.m > self.n_atoms:
            raise UsageError(f"m must be in [1, n_atoms={self.n_atoms}]; got {self.m}")


def zipf_prior(n_atoms: int, alpha: float) -> np.ndarray:
    p = np.arange(1, n_atoms + 1, dtype=np.float64) ** (-alpha)
    return p / p.sum()


def sample_codes(rng: np.random.Generator, n: int, prior: np.ndarray, m: int) -> np.ndarray:
    """(n, K) half-normal codes on m distinct atoms per row, drawn without replacement with weights `prior`.

    Gumbel-top-m on log-weights is exactly successive weighted sampling without replacement, vectorized.
    """
    keys = np.log(prior)[None, :] + rng.gumbel(size=(n, len(prior)))
    support = np.argpartition(-keys, m - 1, axis=1)[:, :m]
    codes = np.zeros((n, len(prior)), dtype=np.float32)
    np.put_along_axis(codes, support, np.abs(rng.standard_normal((n, m))).astype(np.float32), axis=1)
    return codes


def toy_dictionary(rng: np.random.Generator, n_atoms: int, d: int) -> np.ndarray:
    atoms = rng.standard_normal((n_atoms, d)) / np.sqrt(d)
    return (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).astype(np.float32)


def _chunk_rows(n: int) -> int:
    """A chunk size that divides the training rows, so the evaluation rows start on a chunk boundary."""
    for rows in range(min(n, 16384), 63, -1):
        if n % rows == 0:
            return rows
    return min(n, 16384)


def write_toy_store(out, cfg: ToyConfig, *, overwrite: bool = False) -> dict:
    """Write `cfg`'s toy data to the store `out`: the training rows, then the held-out rows (the evaluation split),
    then the ground truth (dictionary, prior, codes). Returns rows, chunk_rows and eval_chunks."""
    prior = zipf_prior(cfg.n_atoms, cfg.alpha)
    dictionary = toy_dictionary(np.random.default_rng(cfg.seed), cfg.n_atoms, cfg.d)
    train = sample_codes(np.random.default_rng(cfg.seed + 1), cfg.n, prior, cfg.m)
    valid = sample_codes(np.random.default_rng(cfg.seed + 2), cfg.n_eval, prior, cfg.m)
    cr = _chunk_rows(cfg.n)
    first_eval = -(-cfg.n // cr)
    eval_chunks = list(range(first_eval, -(-(cfg.n + cfg.n_eval) // cr)))
    writer = StoreWriter.create(
        out,
        hooks={TOY_HOOK: hook_spec(None, cfg.d, "float32", hook="synthetic")},
        has_tokens=False,
        # "osae.store.toy" is where this generator first lived; the recorded name stays so toy stores keep their bytes.
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
        for codes in (train, valid):
            for lo in range(0, len(codes), writer.shard_rows):
                writer.write({TOY_HOOK: codes[lo : lo + writer.shard_rows] @ dictionary})
        writer.write_ground_truth(
            {"dictionary": dictionary, "prior": prior.astype(np.float32), "codes": np.concatenate([train, valid])},
            {"order": "decreasing prior", "config": asdict(cfg)},
        )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"rows": cfg.n + cfg.n_eval, "chunk_rows": cr, "eval_chunks": eval_chunks}
