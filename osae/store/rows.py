"""A split's rows as float32 torch batches in store order: what evaluation and fit's initialisation read.

`iter_rows` cuts each block of `iter_split_rows` (one chunk's interval of the split) into batches, so memory
stays at one block; `load_rows` gathers the first rows of a split into one tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from osae.store.core.reader import ActivationStore, to_float32
from osae.store.loader import iter_split_rows


@dataclass
class RowBatch:
    """Rows start..start+B-1 of the store: `x` (B, D) float32 in the store's units. `block_start` is the
    first row of the block of the store the batch was cut from (batches of one block are contiguous)."""

    start: int
    x: torch.Tensor
    block_start: int

    def __len__(self) -> int:
        return len(self.x)

    @property
    def stop(self) -> int:
        return self.start + len(self.x)


def iter_rows(
    store: ActivationStore,
    hook: str,
    split: str = "eval",
    *,
    max_tokens: int | None = None,
    batch: int = 4096,
    device: str | torch.device = "cpu",
) -> Iterator[RowBatch]:
    """The split's rows in store order, at most `max_tokens` of them, in batches of up to `batch` rows
    (a batch never spans two blocks of the store)."""
    dtype = store.dtype(hook)
    for start, rows in iter_split_rows(store, hook, split, max_rows=max_tokens):
        x_block = torch.from_numpy(to_float32(rows, dtype))
        for s in range(0, len(x_block), batch):
            yield RowBatch(start + s, x_block[s : s + batch].to(device), start)


def load_rows(store: ActivationStore, hook: str, split: str = "eval", *, max_tokens: int | None = None) -> torch.Tensor:
    """The first `max_tokens` rows of the split as one (N, D) float32 tensor (N = 0 for an empty split)."""
    parts = [b.x for b in iter_rows(store, hook, split, max_tokens=max_tokens, batch=1 << 62)]
    return torch.cat(parts) if parts else torch.empty(0, store.d_model(hook))
