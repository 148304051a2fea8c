"""The one evaluation path: rows of a split in batches, and an SAE's codes over them.

Every metric reads the same way: the split's committed rows in store order (`iter_split_rows`), widened to
float32, cut into batches, normalised into the units the SAE was trained in, encoded. A metric then folds
each `CodeBatch` into its accumulators:

    for b in iter_codes(sae, normalizer, store, hook, max_tokens=n):
        sse += float(((b.x - b.recon) ** 2).sum())     # store units
        fires += b.code.fire_counts(sae.cfg.d_sae)     # any code, sparse or dense

Batches are views of one block of the store (a chunk's interval of the split), so memory stays at one block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from osae.store import ActivationStore, Normalizer, RowBatch, iter_rows
from osae.train.architectures.base import SAE
from osae.train.architectures.codes import Code


@dataclass
class CodeBatch:
    """One batch of rows and its code: `rows.x` (B, D) in store units, `x_norm` in the SAE's training units,
    `code` (B tokens, F latents). Reconstructions are in store units and computed when first asked for."""

    rows: RowBatch
    x_norm: torch.Tensor
    code: Code
    sae: SAE = field(repr=False)
    normalizer: Normalizer = field(repr=False)
    _recon: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def x(self) -> torch.Tensor:
        """The rows (B, D) in store units."""
        return self.rows.x

    @property
    def recon(self) -> torch.Tensor:
        """x_hat (B, D) in store units."""
        if self._recon is None:
            self._recon = self.prefix_recon(None)
        return self._recon

    def prefix_recon(self, upto: int | None) -> torch.Tensor:
        """x_hat (B, D) in store units from the latents of index < upto only (None: all of them)."""
        if upto is not None and upto >= self.sae.cfg.d_sae:
            upto = None  # the whole dictionary: the same reconstruction as `recon`
        if upto is None and self._recon is not None:
            return self._recon
        with torch.no_grad():
            return self.normalizer.inverse(self.sae.decode(self.code, upto=upto))


@torch.no_grad()
def encode_rows(sae: SAE, normalizer: Normalizer, rows: RowBatch) -> CodeBatch:
    """Encode one batch of rows (store units) with `sae`, which was trained on `normalizer`'s units."""
    x_norm = normalizer.forward(rows.x)
    return CodeBatch(rows, x_norm, sae.encode(x_norm), sae, normalizer)


def iter_codes(
    sae: SAE,
    normalizer: Normalizer,
    store: ActivationStore,
    hook: str,
    split: str = "eval",
    *,
    max_tokens: int | None = None,
    batch: int = 4096,
) -> Iterator[CodeBatch]:
    """`iter_rows` encoded by `sae`, on the device of its parameters."""
    device = next(sae.parameters()).device
    for rows in iter_rows(store, hook, split, max_tokens=max_tokens, batch=batch, device=device):
        yield encode_rows(sae, normalizer, rows)


@torch.no_grad()
def reconstruct(sae: SAE, normalizer: Normalizer, x: torch.Tensor) -> torch.Tensor:
    """x_hat of rows `x` (B, D) in store units, computed on the SAE's device and returned on x's."""
    device = next(sae.parameters()).device
    return normalizer.inverse(sae.decode(sae.encode(normalizer.forward(x.to(device))))).to(x.device)


def checkpoint_normalizer(cfg: dict) -> Normalizer:
    """The normalisation a checkpoint was trained with (its config.json "normalization"; none if absent)."""
    return Normalizer.from_dict(cfg.get("normalization", {"kind": "none"}))
