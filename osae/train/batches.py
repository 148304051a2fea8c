"""The stream a Trainer reads: batches it can checkpoint and resume (the store's ShuffledLoader is one).

A `ResumableBatches` yields (B, D) float tensors in training units, and `state()` / `load_state()` save and
restore its position, so that a resumed run sees exactly the batches the interrupted one had not yet seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from osae.errors import UsageError


@runtime_checkable
class ResumableBatches(Protocol):
    def __iter__(self) -> Iterator[torch.Tensor]: ...

    def state(self) -> dict: ...

    def load_state(self, state: dict) -> None: ...


class TensorBatches:
    """Consecutive batches of an in-memory (N, D) tensor, repeated epoch after epoch (for the Python API and
    tests): `TensorBatches(x, 4096)`."""

    def __init__(self, x_ND: torch.Tensor, batch_size: int):
        if batch_size <= 0 or len(x_ND) < batch_size:
            raise UsageError(f"need at least one batch of {batch_size} rows; got {len(x_ND)} rows")
        self.x, self.batch_size, self.position = x_ND, batch_size, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        per_epoch = len(self.x) // self.batch_size
        while True:
            i = self.position % per_epoch
            self.position += 1
            yield self.x[i * self.batch_size : (i + 1) * self.batch_size]

    def state(self) -> dict:
        return {"position": self.position}

    def load_state(self, state: dict) -> None:
        self.position = int(state["position"])
